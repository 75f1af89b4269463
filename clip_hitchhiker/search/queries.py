"""What a search may be asked, checked at the edge of `VideoIndex.search` and
`VideoIndex.search_embeddings` (and by the CLI before it loads anything): every refusal is a
QueryError, a ValueError whose one-line message names the query or setting at fault.
"""
import math
import numbers
import unicodedata

import numpy as np
import torch

from clip_hitchhiker.errors import QueryError

__all__ = ["check_queries", "check_search_settings", "check_text_embeds", "check_tokenised"]

# Characters that show nothing: controls, format characters (zero-width space and joiners, the
# BOM, direction marks, the soft hyphen) and separators. CLIP's byte-level BPE gives some of
# them a token (U+200B is token 9844), which says nothing about any video.
_INVISIBLE = ("Cc", "Cf", "Zs", "Zl", "Zp")


def check_queries(texts):
    """texts: a list (or tuple) of query strings, or one string (one query, as clip.tokenize
    takes it). returns: list of str. QueryError for a query that is not text, or is empty or
    only whitespace (CLIP would embed the bare start and end tokens, and every video would come
    back ranked by noise), or shows no character (only invisible ones such as U+200B)."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise QueryError(f"queries must be a list of strings (or one string), got "
                         f"{type(texts).__name__}")
    texts = list(texts)
    for number, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise QueryError(f"query {number} is not text but {type(text).__name__} "
                             f"({text!r}); pass strings")
        if not text.strip():
            raise QueryError(f"query {number} ({text!r}) is empty or only whitespace; give "
                             "some text to search for")
        if all(unicodedata.category(c) in _INVISIBLE for c in text):
            raise QueryError(f"query {number} ({text!r}) holds only invisible characters "
                             "(zero-width, format or control); give some text to search for")
    return texts


def check_tokenised(texts, tokenless, model):
    """QueryError naming the first of texts whose tokenless flag is set: the model's tokenizer
    dropped all of its characters (U+FFFC, U+FEFF, ...), so CLIP would embed its start and end
    tokens alone and rank every video by noise. tokenless: one bool per text
    (backends.LoadedModel.tokenless); model: the model's name, for the message."""
    for number, (text, empty) in enumerate(zip(texts, tokenless), start=1):
        if empty:
            raise QueryError(f"query {number} ({text!r}) holds no token once tokenised by the "
                             f"index's model ({model}), whose tokenizer drops every character "
                             "of it; give some text to search for")


def check_search_settings(k, temperature, aggregate, candidates, mass, aggregates, nprobe=None):
    """QueryError unless k is an integer >= 1, candidates and nprobe None (automatic) or
    integers >= 1, temperature a number > 0, mass in (0, 1] and aggregate one of `aggregates`."""
    counts = [("k", k)] + [(name, value) for name, value in (("candidates", candidates),
                                                             ("nprobe", nprobe))
                           if value is not None]
    for name, value in counts:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise QueryError(f"{name} must be an integer >= 1, got {value!r}")
    if not _is_number(temperature) or not (math.isfinite(temperature) and temperature > 0):
        raise QueryError(f"temperature must be a number > 0, got {temperature!r}")
    if not _is_number(mass) or not 0 < mass <= 1:
        raise QueryError(f"mass must be in (0, 1], got {mass!r}")
    if aggregate not in aggregates:
        raise QueryError(f"aggregate must be one of {aggregates}, got {aggregate!r}")


def check_text_embeds(text_embeds, embed_dim):
    """text_embeds: [T, D] with D = embed_dim: real numbers of any scale and dtype (a tensor that
    requires grad, a numpy array, nested lists). returns: float32 CPU [T, D], each row scaled by
    a power of two so that its largest magnitude lies in [0.5, 1): exact for the cosines (every
    score is the rows' own), and no square then overflows or underflows float32, which turned a
    row of 1e30 (or 1e-30) into noise. QueryError for another shape, a complex dtype, or a row
    that is not finite or is all zero (it cannot rank anything)."""
    try:
        embeds = (text_embeds.detach() if torch.is_tensor(text_embeds)
                  else torch.as_tensor(np.asarray(text_embeds)))
        if not embeds.is_complex():
            embeds = embeds.to(device="cpu", dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
        raise QueryError(f"text_embeds must be a [T, {embed_dim}] array of numbers ({e})") from e
    if embeds.is_complex():
        raise QueryError(f"text_embeds must be real numbers, got {embeds.dtype}")
    if embeds.ndim != 2 or embeds.shape[1] != embed_dim:
        raise QueryError(f"text_embeds must be [T, {embed_dim}] (this index's embedding width "
                         f"is {embed_dim}), got shape {tuple(embeds.shape)}; for one query "
                         f"pass [1, {embed_dim}]")
    bad = (~torch.isfinite(embeds)).any(dim=1) | (embeds == 0).all(dim=1)
    if bad.any():
        rows = bad.nonzero()[:, 0].tolist()
        raise QueryError(f"text_embeds row(s) {rows[:5]}{' ...' if len(rows) > 5 else ''} "
                         "hold NaN or inf or are all zero; they cannot rank videos")
    _, exponent = torch.frexp(embeds.abs().amax(dim=1, keepdim=True))  # [T, 1]
    half = exponent // 2  # two steps, so that no power of two leaves float64's range
    return torch.ldexp(torch.ldexp(embeds, -half), half - exponent).float()


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
