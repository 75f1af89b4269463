"""Retrieval metrics from a similarity matrix: R@1/5/10/50 (percent), MedR and MeanR.

Ranks are 1-based. A query's rank counts the candidates scored strictly higher than its ground
truth; ties are broken "optimistically" (the ground truth goes first, as in the reference
release) or by "averaging" over the tied positions (McSherry and Najork, ECIR 2008).
Everything is vectorised in torch and runs on the similarities' device (so a GPU ranks what it
scored, with no copy to the host); the [Q, V] comparisons run in chunks to bound memory. Only
the [Q] ranks come back to the CPU, where the summary statistics are taken with numpy.
"""
import numpy as np
import torch

_BREAK_TIES = ("optimistically", "averaging")
_MEDIANS = ("average", "lower")
_CHUNK_ELEMENTS = 1 << 24


def t2v_metrics(sims, query_masks=None, break_ties="optimistically", query_to_video=None):
    """Text-to-video retrieval metrics.

    sims: [Q, V] similarities (tensor on any device, or array), higher is better.
    query_to_video: optional int array/tensor [Q], each query's video column. Without it, the
        reference release's convention: Q = k * V and queries j*k .. (j+1)*k - 1 belong to video j.
    query_masks: optional bool array with Q elements; False queries are dropped.
    returns: {"R1", "R5", "R10", "R50", "MedR", "MeanR"} as Python floats.
    """
    return ranks_to_metrics(t2v_ranks(sims, query_masks, break_ties, query_to_video))


def t2v_ranks(sims, query_masks=None, break_ties="optimistically", query_to_video=None):
    """Each kept query's 1-based rank of its video. Arguments as t2v_metrics. returns: [Q']
    float64 numpy array, in query order (the unit a bootstrap resamples)."""
    num_higher, num_tied = t2v_rank_counts(sims, query_masks, query_to_video)
    return ranks_from_counts(num_higher, num_tied, break_ties)


def t2v_rank_counts(sims, query_masks=None, query_to_video=None):
    """For each kept query, how many videos score above its own and how many score the same
    (its own included), in one pass: every tie policy's rank and the tie count follow from
    them. Arguments as t2v_metrics. returns: two [Q'] float64 numpy arrays."""
    sims = _as_matrix(sims)
    query_to_video = _query_videos(sims, query_to_video)
    keep = _query_keep(sims, query_masks)
    sims, query_to_video = sims[keep], query_to_video[keep]
    gt_sims = sims[torch.arange(sims.shape[0], device=sims.device), query_to_video]
    return _count_higher_and_tied(sims, gt_sims)


def v2t_metrics(sims, query_masks=None, break_ties="optimistically", query_to_video=None):
    """Video-to-text retrieval metrics: each video ranks all (kept) queries.

    Same arguments as t2v_metrics, sims still [Q, V]. A video's rank is the best rank among its
    own captions; videos with no kept caption are left out.
    """
    return ranks_to_metrics(v2t_ranks(sims, query_masks, break_ties, query_to_video))


def v2t_ranks(sims, query_masks=None, break_ties="optimistically", query_to_video=None):
    """Each video's (with a kept caption) best rank of its own captions. Arguments as
    t2v_metrics. returns: [V'] float64 numpy array, in video order."""
    sims = _as_matrix(sims)
    query_to_video = _query_videos(sims, query_to_video)
    keep = _query_keep(sims, query_masks)
    sims, query_to_video = sims[keep], query_to_video[keep]
    num_videos = sims.shape[1]
    # The best-scored own caption has the best rank under either tie policy.
    own_sims = sims[torch.arange(sims.shape[0], device=sims.device), query_to_video]
    best_gt = own_sims.new_full((num_videos,), -torch.inf).scatter_reduce(
        0, query_to_video, own_sims, reduce="amax")
    has_caption = torch.bincount(query_to_video, minlength=num_videos) > 0
    columns = torch.nonzero(has_caption).flatten()
    chunk = max(1, _CHUNK_ELEMENTS // max(1, sims.shape[0]))
    return np.concatenate([ground_truth_ranks(sims[:, cols].T, best_gt[cols], break_ties)
                           for cols in torch.split(columns, chunk)])


def v2t_group_ranks(sims, query_masks=None, break_ties="optimistically", query_to_video=None):
    """Video-to-text ranks as the multi-sentence evaluation of Portillo-Quintero et al. (2021)
    and CLIP4Clip scores them (metrics.tensor_video_to_text_sim, then compute_metrics, in
    ArrowLuo/CLIP4Clip): each video's caption set is one candidate, scored by its best caption,
    and a video ranks the caption sets of all the videos. (v2t_ranks ranks every caption
    instead, so another video's second-best caption can push a video down.)

    Arguments as t2v_metrics, sims still [Q, V]. returns: [V'] float64 numpy array, the 1-based
    rank of each video (with a kept caption) of its own caption set, in video order.
    """
    sims = _as_matrix(sims)
    query_to_video = _query_videos(sims, query_to_video)
    keep = _query_keep(sims, query_masks)
    sims, query_to_video = sims[keep], query_to_video[keep]
    num_videos = sims.shape[1]
    # [G, V]: for the caption set of video g, its best caption's score for video v.
    set_sims = sims.new_full((num_videos, num_videos), -torch.inf).scatter_reduce(
        0, query_to_video.unsqueeze(1).expand(-1, num_videos), sims, reduce="amax")
    has_caption = torch.bincount(query_to_video, minlength=num_videos) > 0
    columns = torch.nonzero(has_caption).flatten()
    by_video = set_sims[columns][:, columns].T  # [V', G']: each video's scores of the sets
    return ground_truth_ranks(by_video, torch.diagonal(by_video), break_ties)


def count_tied_queries(sims, query_to_video=None):
    """How many queries score their own video exactly as high as some other video: where the
    tie policy decides the rank. Same arguments as t2v_metrics. returns: int."""
    _, num_tied = t2v_rank_counts(sims, query_to_video=query_to_video)
    return int((num_tied > 1).sum())  # the ground truth ties with itself


def ground_truth_ranks(sims, gt_sims, break_ties="optimistically"):
    """1-based rank of each row's ground-truth score among that row's scores.

    sims: [N, M]; gt_sims: [N], each an entry of its row (tensors on one device, or arrays).
    returns: [N] float64 numpy array.
    """
    _check_break_ties(break_ties)
    sims = torch.as_tensor(sims)
    num_higher, num_tied = _count_higher_and_tied(sims, torch.as_tensor(gt_sims,
                                                                        device=sims.device))
    return ranks_from_counts(num_higher, num_tied, break_ties)


def ranks_from_counts(num_higher, num_tied, break_ties="optimistically"):
    """1-based ranks from the counts of higher and of equal scores (the ground truth included):
    "optimistically" puts the ground truth first among its ties, "averaging" in their middle."""
    _check_break_ties(break_ties)
    if break_ties == "optimistically":
        return num_higher + 1
    return num_higher + (num_tied + 1) / 2


def _count_higher_and_tied(sims, gt_sims):
    """Per row of sims [N, M], the entries above and equal to gt_sims [N], in row chunks on the
    device of sims. returns: two [N] float64 numpy arrays."""
    chunk = max(1, _CHUNK_ELEMENTS // max(1, sims.shape[1]))
    higher, tied = [], []
    for rows, gt in zip(torch.split(sims, chunk), torch.split(gt_sims.unsqueeze(1), chunk)):
        higher.append((rows > gt).sum(dim=1, dtype=torch.float64))
        tied.append((rows == gt).sum(dim=1, dtype=torch.float64))
    if not higher:
        return np.zeros(0), np.zeros(0)
    return torch.cat(higher).cpu().numpy(), torch.cat(tied).cpu().numpy()


def _check_break_ties(break_ties):
    if break_ties not in _BREAK_TIES:
        raise ValueError(f"break_ties must be 'optimistically' or 'averaging', got {break_ties!r}")


def ranks_to_metrics(ranks, median="average"):
    """ranks: [N] 1-based ranks. returns: R@K in percent, MedR and MeanR, as Python floats.

    median: "average" takes the mean of the two middle ranks when N is even (numpy's median,
    the release's); "lower" the smaller of them (torch.median, which CLIP4Clip's and
    Portillo-Quintero's multi-sentence evaluation takes)."""
    if median not in _MEDIANS:
        raise ValueError(f"median must be 'average' or 'lower', got {median!r}")
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries left to score (all masked out?)")
    metrics = {f"R{k}": float(100.0 * np.mean(ranks <= k)) for k in (1, 5, 10, 50)}
    metrics["MedR"] = float(np.median(ranks) if median == "average"
                            else np.sort(ranks)[(ranks.size - 1) // 2])
    metrics["MeanR"] = float(np.mean(ranks))
    return metrics


def _as_matrix(sims):
    """[Q, V] floating tensor on its own device (half precision widened to float32)."""
    if not isinstance(sims, torch.Tensor):
        sims = np.asarray(sims)
        if not (np.issubdtype(sims.dtype, np.floating) or np.issubdtype(sims.dtype, np.integer)):
            raise ValueError(f"sims must be numeric, got dtype {sims.dtype}")
        sims = torch.from_numpy(np.ascontiguousarray(sims))
    sims = sims.detach()
    if sims.ndim != 2 or 0 in sims.shape:
        raise ValueError(f"sims must be a non-empty [num_queries, num_videos] matrix, got shape "
                         f"{tuple(sims.shape)}")
    if sims.dtype in (torch.float16, torch.bfloat16):
        sims = sims.float()
    elif not sims.is_floating_point():
        if sims.is_complex() or sims.dtype == torch.bool:
            raise ValueError(f"sims must be real numbers, got dtype {sims.dtype}")
        sims = sims.double()
    if bool(torch.isnan(sims).any()):
        raise ValueError("sims contains NaN; check the embeddings that produced it")
    return sims


def _query_videos(sims, query_to_video):
    """[Q] int64 video column of each query, on the device of sims."""
    num_queries, num_videos = sims.shape
    if query_to_video is None:
        if num_queries % num_videos:
            raise ValueError(f"sims has {num_queries} queries for {num_videos} videos, not a "
                             "whole number per video; pass query_to_video to give each query's "
                             "video")
        return torch.arange(num_videos, device=sims.device).repeat_interleave(
            num_queries // num_videos)
    query_to_video = torch.as_tensor(np.asarray(query_to_video) if not isinstance(
        query_to_video, torch.Tensor) else query_to_video)
    if tuple(query_to_video.shape) != (num_queries,) or query_to_video.is_floating_point() \
            or query_to_video.dtype == torch.bool or query_to_video.is_complex():
        raise ValueError(f"query_to_video must be an int array of shape ({num_queries},), got "
                         f"{query_to_video.dtype} {tuple(query_to_video.shape)}")
    low, high = int(query_to_video.min()), int(query_to_video.max())
    if low < 0 or high >= num_videos:
        raise ValueError(f"query_to_video values must lie in [0, {num_videos}), got "
                         f"[{low}, {high}]")
    return query_to_video.to(device=sims.device, dtype=torch.long)


def _query_keep(sims, query_masks):
    """[Q] bool on the device of sims, the queries to score."""
    num_queries = sims.shape[0]
    if query_masks is None:
        return torch.ones(num_queries, dtype=torch.bool, device=sims.device)
    query_masks = torch.as_tensor(np.asarray(query_masks) if not isinstance(
        query_masks, torch.Tensor) else query_masks)
    if query_masks.numel() != num_queries:
        raise ValueError(f"query_masks has {query_masks.numel()} elements, expected one per "
                         f"query ({num_queries})")
    return query_masks.reshape(-1).to(device=sims.device, dtype=torch.bool)
