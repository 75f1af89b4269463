"""One interface over the two CLIP libraries: OpenAI's `clip` (the release's, the default) and
`open_clip` (LAION, DFN, MetaCLIP, SigLIP, EVA and the OpenAI weights too).

load_model gives a LoadedModel: the module, its preprocessing Compose (from which
data_loader.FramePreprocess takes its numbers), its own tokenizer, which cuts captions to its
own context, an id for the cache key and a description for the JSON report. model_id_of gives
that id without loading the model, and content_id puts the ids of the same weights (OpenAI's
ViT-B/16 by name, or its downloaded file) in one form, so that a moved file is still its model.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from clip_hitchhiker.models.clip_models import _is_torchscript, file_model_id, load_clip_model
from clip_hitchhiker.downloads import sha256_file_once
from clip_hitchhiker.errors import ConfigError, ModelLoadError

BACKENDS = ("clip", "open_clip")
OPEN_CLIP_INSTALL = "pip install open_clip_torch (or pip install '.[open_clip]')"


@dataclass
class LoadedModel:
    """A CLIP-like model and what goes with it, whichever library loaded it."""
    module: torch.nn.Module      # has encode_image(frames) and encode_text(tokens)
    preprocess: object           # the library's torchvision Compose for one image
    tokenize: Callable           # list of str -> LongTensor [N, context_length], cut to fit
    count_tokens: Callable       # str -> its token count, start and end tokens included
    context_length: int
    model_id: str                # what the embeddings depend on, for the cache key
    info: dict = field(default_factory=dict)  # backend, architecture, pretrained: for the JSON
    embed_dim: int = 0

    @property
    def dtype(self):
        return next(self.module.visual.parameters()).dtype

    def encode_image(self, frames):
        """frames: [n, 3, R, R] on the model's device. returns: [n, D] in the model's dtype."""
        return self.module.encode_image(frames.to(self.dtype))

    def encode_text(self, captions, device):
        """captions: list of str. returns: [len(captions), D] in the model's dtype."""
        return self.module.encode_text(self.tokenize(captions).to(device))

    def tokenless(self, captions):
        """One bool per caption: True where the tokenizer leaves no token between the start and
        end tokens (it drops every character), i.e. the caption tokenises as "" does."""
        tokens = self.tokenize(list(captions) + [""])  # [N + 1, context_length]
        return (tokens[:-1] == tokens[-1]).all(dim=1).tolist()

    def count_truncated(self, captions):
        """How many captions are longer than the context and get cut."""
        return sum(self.count_tokens(c) > self.context_length for c in captions)


def load_model(backend, model, device, pretrained=None, download_root=None):
    """The model named by the command line, in eval mode, with its embedding width probed.

    backend "clip": model is a clip.available_models() name or a checkpoint file (pretrained
    unused). backend "open_clip": model is an open_clip architecture (ViT-B/16 is read as
    ViT-B-16) and pretrained a tag (openai, laion2b_s34b_b88k, ...) or a local weights file; an
    OpenAI TorchScript file is read as OpenAI's own format, whatever the architecture.
    """
    if backend == "clip":
        loaded = _load_with_clip(model, device, download_root)
    elif backend == "open_clip":
        loaded = _load_with_open_clip(model, pretrained or "openai", device, download_root)
    else:
        raise ConfigError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    with torch.inference_mode():
        loaded.embed_dim = int(loaded.encode_text(["a"], device).shape[-1])
    return loaded


def _load_with_clip(name, device, download_root):
    import clip
    from clip.simple_tokenizer import SimpleTokenizer

    module, preprocess, model_id = load_clip_model(name, device, download_root)
    context_length = module.context_length
    tokenizer = SimpleTokenizer()
    return LoadedModel(
        module, preprocess,
        tokenize=lambda texts: clip.tokenize(texts, context_length=context_length,
                                             truncate=True),
        count_tokens=lambda text: len(tokenizer.encode(text)) + 2,
        context_length=context_length, model_id=model_id,
        info={"backend": "clip", "architecture": name if model_id == name else None,
              "pretrained": model_id})


def _load_with_open_clip(architecture, pretrained, device, download_root):
    open_clip = _import_open_clip()
    if os.path.isfile(architecture):
        raise ModelLoadError(f"--model {architecture} is a file; with --backend open_clip, "
                             "--model names the architecture (ViT-B-16, ...) and --pretrained "
                             f"the weights: --model ARCHITECTURE --pretrained {architecture}")
    architecture = open_clip_architecture(architecture)
    precision = "fp16" if device.type == "cuda" else "fp32"  # as clip.load does
    if os.path.isfile(pretrained) and _is_torchscript(pretrained):
        module = open_clip.openai.load_openai_model(pretrained, precision=precision, device=device)
        preprocess = open_clip.image_transform(module.visual.image_size, is_train=False,
                                               mean=module.visual.image_mean,
                                               std=module.visual.image_std)
        architecture, tokenizer_name = "openai-format file", "ViT-B-16"  # OpenAI's tokenizer
    else:
        if architecture not in open_clip.list_models():
            raise ModelLoadError(f"--model {architecture!r} is not an open_clip architecture; "
                                 "run with --list_models to see them")
        tags = open_clip.list_pretrained_tags_by_model(architecture)
        if not os.path.isfile(pretrained) and pretrained not in tags:
            raise ModelLoadError(f"--pretrained {pretrained!r} is neither a file nor a tag of "
                                 f"{architecture} (its tags: {', '.join(tags) or 'none'})")
        module, _, preprocess = _create_open_clip(open_clip, architecture, pretrained,
                                                  precision, device, download_root)
        tokenizer_name = architecture
    tokenizer = open_clip.get_tokenizer(tokenizer_name)
    model_id = model_id_of("open_clip", architecture, pretrained)
    return LoadedModel(
        module.eval(), preprocess, tokenize=tokenizer, count_tokens=_token_counter(tokenizer),
        context_length=tokenizer.context_length, model_id=model_id,
        info={"backend": "open_clip", "architecture": architecture,
              "pretrained": model_id.split(":", 2)[2]})


def open_clip_architecture(name):
    """open_clip's name for an architecture that clip names its own way (ViT-B/16 is ViT-B-16,
    ViT-L/14@336px is ViT-L-14-336); any other name as it is."""
    import clip

    if name in clip.available_models():
        return name.replace("/", "-").replace("@336px", "-336")
    return name


# ----------------------------------------------------------------------------------------------
# Which weights


def model_id_of(backend, model, pretrained=None):
    """The model_id that load_model gives these arguments, without loading the model (a weights
    file is hashed): clip's model name, "sha256:<digest>" of a clip checkpoint, or
    "open_clip:<architecture>:<tag or sha256:digest>"."""
    if backend == "clip":
        return file_model_id(model) if os.path.isfile(model) else model
    pretrained = pretrained or "openai"
    if not os.path.isfile(pretrained):
        return f"open_clip:{open_clip_architecture(model)}:{pretrained}"
    # An OpenAI TorchScript file carries its own architecture, whatever --model says.
    architecture = ("openai-format file" if _is_torchscript(pretrained)
                    else open_clip_architecture(model))
    return f"open_clip:{architecture}:sha256:{sha256_file_once(pretrained)}"


def content_id(model_id):
    """model_id with clip's model names as "sha256:<digest>" of the file clip downloads for them
    (clip checks the download against that digest), so that the same weights by name or by file
    compare equal. Every other id as it is."""
    import clip

    if model_id in clip.available_models():
        return f"sha256:{clip.clip._MODELS[model_id].split('/')[-2]}"
    return model_id


def weights_digest(model_id):
    """The sha256 of the weights file behind model_id, or None (an open_clip tag)."""
    identity = content_id(model_id)
    return identity.rsplit("sha256:", 1)[1] if "sha256:" in identity else None


def describe_model(backend, model, pretrained, model_id):
    """The model by name and digest, for messages: "/x/colour.pt (sha256:...)",
    "ViT-B/16 (sha256:...)", "open_clip ViT-B-16 --pretrained laion2b_s34b_b88k"."""
    name = model if backend == "clip" else f"open_clip {model} --pretrained {pretrained}"
    digest = weights_digest(model_id)
    return f"{name} (sha256:{digest})" if digest else name


def _create_open_clip(open_clip, architecture, pretrained, precision, device, download_root):
    # open_clip logs its own ERROR line before raising; our one-line error says it all.
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        return open_clip.create_model_and_transforms(
            architecture, pretrained=pretrained, precision=precision, device=device,
            cache_dir=download_root)
    except (OSError, RuntimeError, AssertionError, KeyError) as e:
        # A local file of another architecture's weights fails open_clip's shape assertions
        # (or load_state_dict); without a file, urllib and huggingface_hub raise OSErrors and
        # RuntimeErrors when there is no network.
        if os.path.isfile(pretrained):
            raise ModelLoadError(f"--pretrained {pretrained} cannot be loaded into open_clip's "
                                 f"{architecture} ({type(e).__name__}: {e}); is it that "
                                 "architecture's weights? Pass the architecture they were "
                                 "trained as with --model") from e
        if isinstance(e, (AssertionError, KeyError)):
            raise
        raise _fetch_error(open_clip, architecture, pretrained, e) from e
    finally:
        logging.disable(previous)


def _fetch_error(open_clip, architecture, pretrained, error):
    config = open_clip.get_pretrained_cfg(architecture, pretrained) or {}
    source = (f"https://huggingface.co/{config['hf_hub'].rstrip('/')}" if config.get("hf_hub")
              else config.get("url") or f"{architecture}/{pretrained}")
    return ModelLoadError(f"could not fetch open_clip weights {architecture} {pretrained} from "
                          f"{source} ({type(error).__name__}: {error}). On a machine with "
                          "internet, download them, then pass the file with --pretrained "
                          "/path/to/weights (open_clip_pytorch_model.bin, .safetensors or an "
                          "OpenAI .pt)")


def _token_counter(tokenizer):
    """open_clip's BPE tokenizer encodes without start and end tokens; Hugging Face tokenizers
    (SigLIP, ...) count their own special tokens."""
    if hasattr(tokenizer, "encode"):
        return lambda text: len(tokenizer.encode(text)) + 2
    return lambda text: len(tokenizer.tokenizer(text)["input_ids"])


def _import_open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise ConfigError(f"--backend open_clip needs the open_clip package: "
                          f"{OPEN_CLIP_INSTALL}") from e
    return open_clip


def list_models():
    """Lines naming every model each backend can load by name."""
    import clip

    lines = ["clip (--backend clip --model NAME):"]
    lines += [f"  {name}" for name in clip.available_models()]
    try:
        open_clip = _import_open_clip()
    except ConfigError as e:
        return lines + [f"open_clip: not installed ({e})"]
    lines.append("open_clip (--backend open_clip --model ARCHITECTURE --pretrained TAG):")
    lines += [f"  {architecture} {tag}" for architecture, tag in open_clip.list_pretrained()]
    return lines
