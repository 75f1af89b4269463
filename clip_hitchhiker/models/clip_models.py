"""CLIP loading (by name or from a checkpoint) and chunked encoding of frames and captions, over
one dataset and, under torchrun, sharded across ranks."""
import math
import os
import zipfile

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from clip_hitchhiker.downloads import sha256_file_once
from clip_hitchhiker.embedding_cache import cache_content
from clip_hitchhiker.errors import EmbeddingError, ModelLoadError
from clip_hitchhiker.torchrun import all_gather_json, all_gather_rows, collective_step, shard
from data_loader import collate_videos, ignore_interrupts

_TEXT_BATCH = 256


# ----------------------------------------------------------------------------------------------
# Loading


def load_clip_model(name_or_path, device, download_root=None):
    """CLIP by name (downloaded by clip.load) or from a checkpoint file.

    A checkpoint may be a TorchScript archive like the official ones, or a plain state dict
    (read with weights_only=True). returns: (model in eval mode, preprocess, model id for the
    cache: the name, or "sha256:<the file's digest>").
    """
    import clip

    if os.path.isfile(name_or_path):
        if os.path.getsize(name_or_path) == 0:
            raise ModelLoadError(f"--model {name_or_path} is an empty file; pass a CLIP "
                                 "checkpoint (TorchScript or state dict)")
        model_id = file_model_id(name_or_path)
        if _is_torchscript(name_or_path):
            model, preprocess = _load_torchscript_checkpoint(name_or_path, device)
        else:
            model, preprocess = _load_state_dict_checkpoint(name_or_path, device)
        return model.eval(), preprocess, model_id
    if name_or_path not in clip.available_models():
        raise ModelLoadError(f"--model {name_or_path!r} is neither a file nor one of "
                             f"{clip.available_models()}")
    try:
        model, preprocess = clip.load(name_or_path, device=device, jit=False,
                                      download_root=download_root)
    except (OSError, RuntimeError) as e:  # urllib errors are OSErrors; clip raises on a bad hash
        url = clip.clip._MODELS[name_or_path]
        raise ModelLoadError(f"could not download or read CLIP weights {name_or_path!r} ({e}). "
                             f"Fetch {url} on a machine with internet and pass the file with "
                             f"--model /path/to/{os.path.basename(url)}") from e
    return model.eval(), preprocess, name_or_path


def file_model_id(path):
    """The model id of a checkpoint file: "sha256:<its digest>"."""
    return f"sha256:{sha256_file_once(path)}"


def _is_torchscript(path):
    """TorchScript archives hold code/ and constants.pkl; torch.save zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _load_torchscript_checkpoint(path, device):
    import clip

    try:
        return clip.load(path, device=device, jit=False)
    except (KeyError, AttributeError, RuntimeError, TypeError) as e:  # not CLIP's parameters
        raise ModelLoadError(f"--model {path} is a TorchScript archive but not a CLIP model "
                             f"({type(e).__name__}: {e})") from e


def _load_state_dict_checkpoint(path, device):
    import clip

    with open(path, "rb") as f:
        is_pickle = f.read(1) == b"\x80"
    if not (is_pickle or zipfile.is_zipfile(path)):
        raise ModelLoadError(f"--model {path} is not a checkpoint (neither a TorchScript or "
                             "torch.save archive nor a pickle); pass a CLIP checkpoint")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ModelLoadError(f"cannot read --model {path} as a TorchScript archive or a state "
                             f"dict ({type(e).__name__}: {e}); is it a CLIP checkpoint?") from e
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    try:
        model = clip.model.build_model(state_dict).to(device)
    except (KeyError, AttributeError, RuntimeError, TypeError) as e:
        raise ModelLoadError(f"{path} is not a CLIP state dict ({e})") from e
    if device.type == "cpu":
        model.float()  # as clip.load does on the CPU
    return model, clip.clip._transform(model.visual.input_resolution)


def frame_dtype_for(model_dtype):
    """The dtype workers preprocess frames in: fp16 for an fp16 model (what encode_image casts to
    anyway, at half the transfer), else float32."""
    return torch.float16 if model_dtype == torch.float16 else torch.float32


# ----------------------------------------------------------------------------------------------
# Encoding


class ChunkedImageEncoder:
    """Feeds frames to model.encode_image (a backends.LoadedModel) in chunks of exactly `chunk`
    frames, across videos, so that small videos still fill the device and 120-frame batches
    never overflow it."""

    def __init__(self, model, chunk):
        self.model, self.chunk = model, chunk
        self.pending, self.pending_count, self.outputs = [], 0, []

    def add(self, frames):
        """frames: [n, 3, R, R] on the model's device."""
        self.pending.append(frames)
        self.pending_count += len(frames)
        while self.pending_count >= self.chunk:
            self._encode(self.chunk)

    def finish(self):
        """returns: float32 CPU [total frames, D], in the order added."""
        if self.pending_count:
            self._encode(self.pending_count)
        if not self.outputs:
            return torch.zeros(0, self.model.embed_dim)
        return torch.cat(self.outputs)

    def _encode(self, count):
        frames = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending = [frames[count:]]
        self.pending_count -= count
        features = self.model.encode_image(frames[:count])
        self.outputs.append(features.float().cpu())


def prefetch_factor(num_workers, batch_size, num_frames, frame_chunk):
    """Batches each DataLoader worker keeps ready: a whole encode chunk decoded ahead, so that
    decoding overlaps with encoding (num_workers > 0)."""
    frames_per_round = num_workers * batch_size * num_frames
    return max(2, math.ceil(frame_chunk / frames_per_round) + 1)


def encode_videos(model, dataset, indices, device, *, batch_size=1, num_workers=0,
                  frame_chunk=256, device_preprocess=None, on_failures=None,
                  show_progress=False):
    """Encode dataset[indices] (items as VideoDataset's with on_error="report").

    device_preprocess: None when the workers preprocess; else the FramePreprocess to apply on
    `device` to the raw uint8 frames the workers send (dataset.preprocess is then None).
    on_failures([[video_id, reason], ...]) is called with each batch's failed videos, and may
    raise to stop the run. returns: (kept indices, float32 [n, F, D], [(index, reason)], what
    was decoded of each kept video, as read_video reports it).
    """
    options = {}
    if num_workers > 0:
        options["prefetch_factor"] = prefetch_factor(num_workers, batch_size, dataset.num_frames,
                                                     frame_chunk)
    # Frames decoded on the GPU (--decode_on device) are there already: nothing to pin.
    pin = device.type == "cuda" and getattr(dataset, "decode_device", "cpu") == "cpu"
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=pin, collate_fn=collate_videos,
                        worker_init_fn=ignore_interrupts, **options)
    encoder = ChunkedImageEncoder(model, frame_chunk)
    kept, failures, decoded = [], [], []
    for batch in tqdm(loader, desc="encoding videos", unit="batch", disable=not show_progress):
        batch_failures = [(int(i), e) for i, e in zip(batch["index"], batch["error"]) if e]
        if batch_failures and on_failures is not None:
            on_failures([[dataset.video_ids[i], e] for i, e in batch_failures])
        failures += batch_failures
        for index, video, error, info in zip(batch["index"].tolist(), batch["video"],
                                             batch["error"], batch["decoded"]):
            if error:
                continue
            frames = video.to(device, non_blocking=True)
            encoder.add(frames if device_preprocess is None else device_preprocess(frames))
            kept.append(index)
            decoded.append(info)
    features = encoder.finish()
    features = features.view(len(kept), dataset.num_frames, features.shape[-1])
    return kept, features, failures, decoded


def check_embeddings(text_embeds, video_embeds, model_name):
    """Raise EmbeddingError if any caption or frame embedding is zero or not finite: a broken
    model whose every score ties would otherwise report perfect retrieval.

    text_embeds: [Q, D]; video_embeds: [V, F, D]; model_name: what --model named.
    """
    bad_text = int((~torch.isfinite(text_embeds).all(1) | (text_embeds.norm(dim=1) == 0)).sum())
    frames = video_embeds.reshape(-1, video_embeds.shape[-1])
    bad_frames = int((~torch.isfinite(frames).all(1) | (frames.norm(dim=1) == 0)).sum())
    if bad_text or bad_frames:
        raise EmbeddingError(f"model {model_name} gave zero or non-finite embeddings for "
                             f"{bad_text} of {len(text_embeds)} caption(s) and {bad_frames} of "
                             f"{len(frames)} frame(s); the checkpoint is broken (zeroed "
                             "projections?), check --model")


def compute_embeddings(model, dataset, ctx, *, batch_size, num_workers, frame_chunk,
                       device_preprocess=None, on_failures=None):
    """Encode every video and every distinct caption, sharded across ranks; gathered on all.

    ctx: a torchrun.Context; device_preprocess and on_failures: as for encode_videos.

    returns: (the cache content, see embedding_cache.cache_content; videos decoded here).
    """
    video_indices = shard(len(dataset), ctx)
    kept, video_embeds, failures, decoded = collective_step(ctx, lambda: encode_videos(
        model, dataset, video_indices, ctx.device, batch_size=batch_size,
        num_workers=num_workers, frame_chunk=frame_chunk, device_preprocess=device_preprocess,
        show_progress=ctx.is_main, on_failures=on_failures))
    kept = all_gather_rows(ctx, torch.tensor(kept, dtype=torch.long)).tolist()
    video_embeds = all_gather_rows(ctx, video_embeds)
    failures = [f for rank_failures in all_gather_json(ctx, failures) for f in rank_failures]
    decoded = [d for rank_decoded in all_gather_json(ctx, decoded) for d in rank_decoded]
    content = cache_content(
        video_embeds=video_embeds, video_ids=[dataset.video_ids[i] for i in kept],
        skipped=[[dataset.video_ids[i], message] for i, message in sorted(failures)],
        decoded={dataset.video_ids[i]: info for i, info in zip(kept, decoded)},
        **compute_text_fields(model, dataset, ctx))
    return content, len(video_indices)


def compute_text_fields(model, dataset, ctx):
    """The query side of the cache content (see embedding_cache.cache_content): every distinct
    text encoded, sharded across ranks, and pooled per query; with the captions, each query's
    video, the task and the labels, all as the dataset has them now. Cheap next to the videos,
    so a run with other prompts or paragraph mode recomputes only this.
    returns: {"text_embeds", "query_video_ids", "captions", "task", "labels"}."""
    texts, text_queries = dataset.text_rows()
    distinct = list(dict.fromkeys(texts))
    caption_indices = shard(len(distinct), ctx)
    text_embeds = collective_step(ctx, lambda: encode_captions(
        model, [distinct[i] for i in caption_indices], ctx.device))
    text_embeds = all_gather_rows(ctx, text_embeds)
    row_of = {c: i for i, c in enumerate(distinct)}
    row_embeds = text_embeds[torch.tensor([row_of[t] for t in texts], dtype=torch.long)]
    labels = getattr(dataset, "labels", None)
    return {"text_embeds": pool_query_texts(row_embeds, text_queries, len(dataset.queries)),
            "query_video_ids": dataset.queries["video_id"].tolist(),
            "captions": dataset.queries["caption"].tolist(), "task": dataset.task,
            "labels": None if labels is None else dict(zip(dataset.video_ids, labels))}


def pool_query_texts(row_embeds, text_queries, num_queries):
    """One embedding per query: the row itself where a query has one text (as CLIP encodes it),
    else the mean of its texts' unit embeddings (prompt ensembles, sentences of a paragraph).

    row_embeds: [R, D]; text_queries: [R] the query of each row. returns: [num_queries, D].
    """
    text_queries = torch.as_tensor(text_queries, dtype=torch.long)
    counts = torch.bincount(text_queries, minlength=num_queries)
    if bool((counts == 1).all()):
        return row_embeds[torch.argsort(text_queries, stable=True)]
    unit = row_embeds / row_embeds.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sums = torch.zeros(num_queries, row_embeds.shape[1]).index_add_(0, text_queries, unit)
    return sums / counts.clamp_min(1).unsqueeze(1)


def encode_captions(model, captions, device):
    """model: a backends.LoadedModel; captions: list of str, cut to the model's context.
    returns: float32 CPU [len(captions), D]."""
    outputs = [torch.zeros(0, model.embed_dim)]
    for start in range(0, len(captions), _TEXT_BATCH):
        outputs.append(model.encode_text(captions[start:start + _TEXT_BATCH], device)
                       .float().cpu())
    return torch.cat(outputs)
