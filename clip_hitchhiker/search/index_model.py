"""Which model encodes for an index: the one it records, or the same weights where they are now.

An index's embeddings mean something only next to the model that made them, so `index` and
`search` use the index's own model unless told otherwise, and accept another only when it holds
the same weights (by content digest: a moved checkpoint, or OpenAI's ViT-B/16 by name and its
downloaded file). Any other model is refused in one line that names both, by name and digest,
before anything is loaded or downloaded.
"""
import os

from clip_hitchhiker.errors import ConfigError, VideoIndexError
from clip_hitchhiker.models.backends import content_id, describe_model, model_id_of

__all__ = ["DEFAULT_BACKEND", "DEFAULT_MODEL", "index_run_model", "search_model"]

DEFAULT_BACKEND, DEFAULT_MODEL = "clip", "ViT-B/16"


def index_run_model(folder, recorded, backend=None, model=None, pretrained=None):
    """(backend, model, pretrained, model_id or None) for an `index` run into folder.

    recorded: the index's config (None for a new index: clip's ViT-B/16 by default, and model_id
    None: the loader's). Options not given (None) are the index's own; with all three left out,
    the recorded model must still be where it was. A model whose weights differ from the
    recorded ones is refused; the same weights elsewhere keep the recorded model_id.
    """
    if recorded is None:
        backend, model = backend or DEFAULT_BACKEND, model or DEFAULT_MODEL
        _check_pretrained(backend, pretrained)
        return backend, model, pretrained, None
    if backend is None and model is None and pretrained is None:
        _check_present(folder, recorded, "index ... --model FILE")
        return recorded["backend"], recorded["model"], recorded["pretrained"], \
            recorded["model_id"]
    same_backend = backend in (None, recorded["backend"])
    backend = backend or recorded["backend"]
    model = model or (recorded["model"] if same_backend else DEFAULT_MODEL)
    if pretrained is None and same_backend:
        pretrained = recorded["pretrained"]
    _check_pretrained(backend, pretrained)
    other = _other_model(recorded, backend, model, pretrained)
    if other:
        raise VideoIndexError(
            f"{folder} was built with the model {_recorded(recorded)}; this run has {other}. "
            "Leave out --model to add to it with its own model, or index into another --index "
            "folder")
    return backend, model, pretrained, recorded["model_id"]


def search_model(folder, recorded, model_file=None):
    """(backend, model, pretrained) that `search` loads for the index in folder: the recorded
    ones, or with model_file (`search --model`) in place of the recorded weights file, which it
    must equal by content."""
    if model_file is None:
        _check_present(folder, recorded, "search ... --model FILE")
        return recorded["backend"], recorded["model"], recorded["pretrained"]
    if not os.path.isfile(model_file):
        raise ConfigError(f"--model {model_file} is not a file; pass the weights file "
                          f"{folder} was built with, {_recorded(recorded)}, where it is now")
    if recorded["backend"] == "clip":
        backend, model, pretrained = "clip", model_file, None
    else:
        backend, model, pretrained = "open_clip", recorded["model"], model_file
    other = _other_model(recorded, backend, model, pretrained)
    if other:
        raise VideoIndexError(
            f"--model {other} is not the model {folder} was built with, {_recorded(recorded)}; "
            "pass that model's file, or search an index built with this one")
    return backend, model, pretrained


def _other_model(recorded, backend, model, pretrained):
    """None if these options load the recorded weights (by content), else the model they
    name, by name and digest (a weights file is hashed, nothing is loaded)."""
    wanted = model_id_of(backend, model, pretrained)
    if content_id(wanted) == content_id(recorded["model_id"]):
        return None
    return describe_model(backend, model, pretrained, wanted)


def _recorded(recorded):
    return describe_model(recorded["backend"], recorded["model"], recorded["pretrained"],
                          recorded["model_id"])


def _check_present(folder, recorded, option):
    """The recorded weights file, if the model is loaded from one, must still be there."""
    if _is_name(recorded):
        return
    weights = recorded["model"] if recorded["backend"] == "clip" else recorded["pretrained"]
    if not os.path.isfile(weights):
        raise VideoIndexError(
            f"{folder} was built with the model {_recorded(recorded)}, and that file is not "
            f"there now; if it moved, pass it where it is: {option}")


def _is_name(recorded):
    """True if the recorded model is loaded by name (clip's or an open_clip tag), not a file."""
    if recorded["backend"] == "clip":
        return recorded["model_id"] == recorded["model"]
    return not recorded["model_id"].split(":", 2)[2].startswith("sha256:")


def _check_pretrained(backend, pretrained):
    if pretrained is not None and backend != "open_clip":
        raise ConfigError("--pretrained is for --backend open_clip; with clip, --model names "
                          "the weights")
