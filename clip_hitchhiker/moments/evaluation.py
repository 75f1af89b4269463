"""Zero-shot moment localisation: temporal IoU, R@1 at IoU thresholds, mIoU, and the baselines
that query-scoring's moments are compared with. Pure functions of seconds and embeddings.

The metrics follow the official evaluations:
- TALL (Gao et al., ICCV 2017; github.com/jiyanggao/TALL, main.py: calculate_IoU and
  compute_IoU_recall_top_n_forreg), which introduced Charades-STA: IoU = (min(ends) -
  max(starts)) / (max(ends) - min(starts)), and a query is recalled when IoU >= the threshold.
- ActivityNet Captions' dense-captioning evaluation (github.com/ranjaykrishna/densevid_eval,
  evaluate.py: iou): intersection max(0, ...), union min(hull, sum of lengths), and the
  division by union + 1e-8.

Where the two differ, this module decides so (and tests it):
- disjoint intervals: IoU 0 (TALL's formula gives a negative number, which would lower mIoU);
  touching intervals also 0;
- an exact threshold counts (IoU >= m, as TALL; densevid's + 1e-8 puts [0, 1] against [0, 2]
  just under 0.5);
- two zero-length intervals: IoU 0 (TALL divides by zero; densevid gives 0);
- ground-truth moments are clipped to [0, duration] of the decoded video before scoring
  (Charades-STA has moments that end after their video does); a moment that starts at or past
  the end becomes zero-length and is never recalled.
R@1 and mIoU are percentages over the queries.
"""
import numpy as np

from clip_hitchhiker.moments.rule import TIE_TOLERANCE, first_best, frame_cells

__all__ = ["IOU_THRESHOLDS", "WINDOW_FRACTIONS", "best_frame_window", "centred_window",
           "clip_to_video", "interval_iou", "moment_metrics", "per_query_columns",
           "sliding_window_moments"]

IOU_THRESHOLDS = (0.3, 0.5, 0.7)
# Sliding-window lengths as fractions of the video (the usual multi-scale proposals).
WINDOW_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _intervals(intervals, name):
    array = np.asarray(intervals, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must be [N, 2] (start, end) pairs, got shape {array.shape}")
    if not np.all(np.isfinite(array)) or np.any(array[:, 0] > array[:, 1]):
        raise ValueError(f"{name} must be finite with start <= end")
    return array


def interval_iou(predicted, truth):
    """Temporal IoU of each predicted interval with its ground truth.

    predicted, truth: [N, 2] (start, end) seconds, start <= end. returns: float64 [N] in
    [0, 1]: 0 for disjoint, touching or zero-length pairs (see the module docstring).
    """
    predicted, truth = _intervals(predicted, "predicted"), _intervals(truth, "truth")
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted {predicted.shape} and truth {truth.shape} differ in shape")
    overlap = np.minimum(predicted[:, 1], truth[:, 1]) - np.maximum(predicted[:, 0], truth[:, 0])
    intersection = np.maximum(overlap, 0.0)
    # Where they overlap, the hull is the union; where they do not, the intersection is 0.
    hull = np.maximum(predicted[:, 1], truth[:, 1]) - np.minimum(predicted[:, 0], truth[:, 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(hull > 0, intersection / hull, 0.0)


def clip_to_video(moments, durations):
    """moments: [N, 2] seconds (start <= end); durations: [N] seconds > 0.
    returns: ([N, 2] clipped to [0, duration], [N] bool: which were changed)."""
    moments = _intervals(moments, "moments")
    durations = np.asarray(durations, dtype=np.float64)
    if durations.shape != (len(moments),) or not np.all(durations > 0):
        raise ValueError(f"durations must be [{len(moments)}] positive seconds, got shape "
                         f"{durations.shape}")
    clipped = np.clip(moments, 0.0, durations[:, None])
    return clipped, np.any(clipped != moments, axis=1)


def per_query_columns(ious, thresholds=IOU_THRESHOLDS):
    """The per-query values whose means are the metrics, in percent:
    {"R1@m": 100 * [iou >= m] for each m, "mIoU": 100 * iou}, each float64 [N]."""
    ious = np.asarray(ious, dtype=np.float64)
    columns = {f"R1@{m}": 100.0 * (ious >= m) for m in thresholds}
    columns["mIoU"] = 100.0 * ious
    return columns


def moment_metrics(ious, thresholds=IOU_THRESHOLDS):
    """ious: [N] top-1 IoU of each query, N >= 1. returns: {"R1@0.3", "R1@0.5", "R1@0.7",
    "mIoU"}, percentages over the queries."""
    if len(ious) == 0:
        raise ValueError("no query to score")
    return {name: float(np.mean(values))
            for name, values in per_query_columns(ious, thresholds).items()}


# ----------------------------------------------------------------------------------------------
# Baselines


def centred_window(duration, length):
    """A window of `length` seconds (cut to the video) centred in [0, duration]."""
    length = min(float(length), float(duration))
    start = (float(duration) - length) / 2
    return start, start + length


def best_frame_window(frame_scores, frame_times, duration, length):
    """A fixed-length window centred on the best-scoring frame, shifted to lie in the video.

    frame_scores: [F] text-frame similarities; of equally good frames (within
    moments.rule.TIE_TOLERANCE, so that rounding does not choose) the earliest wins;
    frame_times: [F] seconds; length: seconds (cut to the duration). returns: (start, end)
    seconds.
    """
    scores = np.asarray(frame_scores, dtype=np.float64)
    if scores.shape != np.shape(frame_times) or len(scores) == 0:
        raise ValueError(f"frame_scores {scores.shape} and frame_times {np.shape(frame_times)} "
                         "must be the same non-empty shape")
    duration = float(duration)
    length = min(float(length), duration)
    peak = float(np.clip(frame_times[first_best(scores)], 0.0, duration))
    start = min(max(peak - length / 2, 0.0), duration - length)
    return start, start + length


def sliding_window_moments(text_embeds, frame_embeds, frame_times, duration,
                           fractions=WINDOW_FRACTIONS):
    """For each text, the window of consecutive frame cells whose mean-pooled frames match it
    best.

    text_embeds: [T, D]; frame_embeds: [F, D] (unnormalised, as mean pooling takes them);
    frame_times: [F] seconds, ascending; fractions: window lengths as fractions of the F frames
    (each rounded to a whole number of frames, at least 1). A window's score is the cosine of
    the text with the mean of its frames (query_scoring.similarity_meanpooling); its moment
    runs from its first frame's cell start to its last frame's cell end (moments.frame_cells).
    Windows whose scores are within moments.rule.TIE_TOLERANCE of the best tie (rounding must
    not choose among equal frames); ties go to the shorter window, then the earlier.
    returns: (moments [T, 2] seconds, scores [T] of the chosen windows).
    """
    frames = np.asarray(frame_embeds, dtype=np.float64)
    texts = np.asarray(text_embeds, dtype=np.float64)
    num_frames = len(frames)
    if frames.ndim != 2 or num_frames == 0 or texts.ndim != 2 or texts.shape[1] != frames.shape[1]:
        raise ValueError(f"text_embeds [T, D] and frame_embeds [F, D] do not fit: "
                         f"{texts.shape}, {frames.shape}")
    if not fractions or any(not (0 < f <= 1) for f in fractions):
        raise ValueError(f"window fractions must be in (0, 1], got {fractions}")
    starts, ends = frame_cells(frame_times, duration)
    lengths = sorted({min(num_frames, max(1, int(round(f * num_frames)))) for f in fractions})
    prefix = np.concatenate([np.zeros((1, frames.shape[1])), np.cumsum(frames, axis=0)])
    text_units = texts / np.maximum(np.linalg.norm(texts, axis=1, keepdims=True), 1e-12)
    scores = [_window_scores(text_units, prefix, length) for length in lengths]  # each [W, T]
    best = np.max([s.max(axis=0) for s in scores], axis=0)  # [T]
    moments, chosen = np.zeros((len(texts), 2)), np.full(len(texts), np.nan)
    for length, window_scores in zip(lengths, scores):  # shortest first
        tied = window_scores >= best - TIE_TOLERANCE  # [W, T]
        new = np.isnan(chosen) & tied.any(axis=0)
        first = np.argmax(tied, axis=0)[new]  # the earliest tied window of this length
        chosen[new] = window_scores[first, np.flatnonzero(new)]
        moments[new, 0] = starts[first]
        moments[new, 1] = ends[first + length - 1]
    return moments, chosen


def _window_scores(text_units, prefix, length):
    """[W, T] cosines of unit texts [T, D] with every window of `length` frames, from the
    frames' prefix sums [F + 1, D] (a window's sum has its mean's cosine)."""
    sums = prefix[length:] - prefix[:-length]  # [W, D]
    return (sums @ text_units.T) / np.maximum(np.linalg.norm(sums, axis=1), 1e-12)[:, None]
