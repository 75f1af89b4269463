"""What a search may be asked, checked at the edge of `VideoIndex.search` and
`VideoIndex.search_embeddings` (and by the CLI before it loads anything): every refusal is a
QueryError, a ValueError whose one-line message names the query or setting at fault.
"""
import math
import numbers

import torch

from clip_hitchhiker.errors import QueryError

__all__ = ["check_queries", "check_search_settings", "check_text_embeds"]


def check_queries(texts):
    """texts: a list (or tuple) of query strings, or one string (one query, as clip.tokenize
    takes it). returns: list of str. QueryError for a query that is not text, or is empty or
    only whitespace (CLIP would embed the bare start and end tokens, and every video would come
    back ranked by noise)."""
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
    return texts


def check_search_settings(k, temperature, aggregate, candidates, mass, aggregates):
    """QueryError unless k and candidates are integers >= 1, temperature a number > 0, mass in
    (0, 1] and aggregate one of `aggregates`."""
    for name, value in (("k", k), ("candidates", candidates)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise QueryError(f"{name} must be an integer >= 1, got {value!r}")
    if not _is_number(temperature) or not (math.isfinite(temperature) and temperature > 0):
        raise QueryError(f"temperature must be a number > 0, got {temperature!r}")
    if not _is_number(mass) or not 0 < mass <= 1:
        raise QueryError(f"mass must be in (0, 1], got {mass!r}")
    if aggregate not in aggregates:
        raise QueryError(f"aggregate must be one of {aggregates}, got {aggregate!r}")


def check_text_embeds(text_embeds, embed_dim):
    """text_embeds: [T, D] with D = embed_dim, any scale. returns: float32 CPU [T, D].
    QueryError for another shape, or a row that is not finite or is all zero (it cannot rank
    anything)."""
    try:
        embeds = torch.as_tensor(text_embeds, dtype=torch.float32, device="cpu")
    except (TypeError, ValueError, RuntimeError) as e:
        raise QueryError(f"text_embeds must be a [T, {embed_dim}] array of numbers ({e})") from e
    if embeds.ndim != 2 or embeds.shape[1] != embed_dim:
        raise QueryError(f"text_embeds must be [T, {embed_dim}] (this index's embedding width "
                         f"is {embed_dim}), got shape {tuple(embeds.shape)}; for one query "
                         f"pass [1, {embed_dim}]")
    bad = (~torch.isfinite(embeds)).any(dim=1) | (embeds == 0).all(dim=1)
    if bad.any():
        rows = bad.nonzero()[:, 0].tolist()
        raise QueryError(f"text_embeds row(s) {rows[:5]}{' ...' if len(rows) > 5 else ''} "
                         "hold NaN or inf or are all zero; they cannot rank videos")
    return embeds


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
