"""Retrieval metrics from a similarity matrix: R@1/5/10/50 (percent), MedR and MeanR.

Ranks are 1-based. A query's rank counts the candidates scored strictly higher than its ground
truth; ties are broken "optimistically" (the ground truth goes first, as in the reference
release) or by "averaging" over the tied positions (McSherry and Najork, ECIR 2008).
Everything is vectorised; the [Q, V] comparisons run in row chunks to bound memory.
"""
import numpy as np
import torch

_BREAK_TIES = ("optimistically", "averaging")
_CHUNK_ELEMENTS = 1 << 24


def t2v_metrics(sims, query_masks=None, break_ties="optimistically", query_to_video=None):
    """Text-to-video retrieval metrics.

    sims: [Q, V] similarities (tensor or array), higher is better.
    query_to_video: optional int array [Q], each query's video column. Without it, the
        reference release's convention: Q = k * V and queries j*k .. (j+1)*k - 1 belong to video j.
    query_masks: optional bool array with Q elements; False queries are dropped.
    returns: {"R1", "R5", "R10", "R50", "MedR", "MeanR"} as Python floats.
    """
    sims = _as_matrix(sims)
    query_to_video = _query_videos(sims, query_to_video)
    keep = _query_keep(sims.shape[0], query_masks)
    sims, query_to_video = sims[keep], query_to_video[keep]
    gt_sims = sims[np.arange(sims.shape[0]), query_to_video]
    ranks = ground_truth_ranks(sims, gt_sims, break_ties)
    return ranks_to_metrics(ranks)


def v2t_metrics(sims, query_masks=None, break_ties="optimistically", query_to_video=None):
    """Video-to-text retrieval metrics: each video ranks all (kept) queries.

    Same arguments as t2v_metrics, sims still [Q, V]. A video's rank is the best rank among its
    own captions; videos with no kept caption are left out.
    """
    sims = _as_matrix(sims)
    query_to_video = _query_videos(sims, query_to_video)
    keep = _query_keep(sims.shape[0], query_masks)
    sims, query_to_video = sims[keep], query_to_video[keep]
    num_videos = sims.shape[1]
    # The best-scored own caption has the best rank under either tie policy.
    best_gt = np.full(num_videos, -np.inf, dtype=sims.dtype)
    np.maximum.at(best_gt, query_to_video, sims[np.arange(sims.shape[0]), query_to_video])
    has_caption = np.bincount(query_to_video, minlength=num_videos) > 0
    video_sims = np.ascontiguousarray(sims.T[has_caption])  # [V', Q]
    ranks = ground_truth_ranks(video_sims, best_gt[has_caption], break_ties)
    return ranks_to_metrics(ranks)


def ground_truth_ranks(sims, gt_sims, break_ties="optimistically"):
    """1-based rank of each row's ground-truth score among that row's scores.

    sims: [N, M]; gt_sims: [N], each an entry of its row. returns: [N] float64.
    """
    if break_ties not in _BREAK_TIES:
        raise ValueError(f"break_ties must be 'optimistically' or 'averaging', got {break_ties!r}")
    ranks = np.empty(sims.shape[0], dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, sims.shape[1]))
    for start in range(0, sims.shape[0], chunk):
        rows = sims[start:start + chunk]
        gt = gt_sims[start:start + chunk, None]
        num_higher = (rows > gt).sum(axis=1)
        if break_ties == "optimistically":
            ranks[start:start + chunk] = num_higher + 1
        else:
            num_tied = (rows == gt).sum(axis=1)  # includes the ground truth itself
            ranks[start:start + chunk] = num_higher + (num_tied + 1) / 2
    return ranks


def ranks_to_metrics(ranks):
    """ranks: [N] 1-based ranks. returns: R@K in percent, MedR and MeanR, as Python floats."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries left to score (all masked out?)")
    metrics = {f"R{k}": float(100.0 * np.mean(ranks <= k)) for k in (1, 5, 10, 50)}
    metrics["MedR"] = float(np.median(ranks))
    metrics["MeanR"] = float(np.mean(ranks))
    return metrics


def _as_matrix(sims):
    if isinstance(sims, torch.Tensor):
        sims = sims.detach().cpu()
        sims = (sims.float() if sims.dtype in (torch.float16, torch.bfloat16) else sims).numpy()
    sims = np.asarray(sims)
    if sims.ndim != 2 or 0 in sims.shape:
        raise ValueError(f"sims must be a non-empty [num_queries, num_videos] matrix, got shape "
                         f"{sims.shape}")
    if not (np.issubdtype(sims.dtype, np.floating) or np.issubdtype(sims.dtype, np.integer)):
        raise ValueError(f"sims must be numeric, got dtype {sims.dtype}")
    if not np.issubdtype(sims.dtype, np.floating):
        sims = sims.astype(np.float64)
    if np.isnan(sims).any():
        raise ValueError("sims contains NaN; check the embeddings that produced it")
    return sims


def _query_videos(sims, query_to_video):
    """[Q] int64 video column of each query."""
    num_queries, num_videos = sims.shape
    if query_to_video is None:
        if num_queries % num_videos:
            raise ValueError(f"sims has {num_queries} queries for {num_videos} videos, not a "
                             "whole number per video; pass query_to_video to give each query's "
                             "video")
        return np.repeat(np.arange(num_videos), num_queries // num_videos)
    if isinstance(query_to_video, torch.Tensor):
        query_to_video = query_to_video.cpu().numpy()
    query_to_video = np.asarray(query_to_video)
    if query_to_video.shape != (num_queries,) or not np.issubdtype(query_to_video.dtype,
                                                                    np.integer):
        raise ValueError(f"query_to_video must be an int array of shape ({num_queries},), got "
                         f"{query_to_video.dtype} {query_to_video.shape}")
    if query_to_video.min() < 0 or query_to_video.max() >= num_videos:
        raise ValueError(f"query_to_video values must lie in [0, {num_videos}), got "
                         f"[{query_to_video.min()}, {query_to_video.max()}]")
    return query_to_video.astype(np.int64)


def _query_keep(num_queries, query_masks):
    """[Q] bool, the queries to score."""
    if query_masks is None:
        return np.ones(num_queries, dtype=bool)
    if isinstance(query_masks, torch.Tensor):
        query_masks = query_masks.cpu().numpy()
    query_masks = np.asarray(query_masks)
    if query_masks.size != num_queries:
        raise ValueError(f"query_masks has {query_masks.size} elements, expected one per query "
                         f"({num_queries})")
    return query_masks.reshape(-1).astype(bool)
