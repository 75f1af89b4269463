"""From query-scoring frame weights to a moment (start, end, peak) in seconds.

One rule, used by `search_videos.py search` and by the moment-localisation benchmark, so that the
benchmark measures what search prints.

Each sampled frame stands for a cell of time: from the midpoint with the previous frame's time
to the midpoint with the next one's (the first cell starts at 0, the last ends at the video's
duration). The peak is the time of the frame with the largest weight (the earliest on a tie).
The moment is the shortest run of consecutive cells, in seconds, that holds the peak and at
least `mass` of the weight (0.5 by default); among equally short runs, the one with more weight,
then the earliest. Weights (as shares of the total) and seconds that differ by less than
TIE_TOLERANCE count as equal, so that float rounding never decides a tie (equal frames give
the earliest) and never makes a run that holds `mass` fall short.
"""
import numpy as np

__all__ = ["DEFAULT_MASS", "TIE_TOLERANCE", "first_best", "frame_cells", "moment_from_weights",
           "peak_frame"]

DEFAULT_MASS = 0.5
# Far above the rounding of a sum of a million float64 weights (~1e-10 at worst), far below any
# difference between frames that matters.
TIE_TOLERANCE = 1e-9


def frame_cells(frame_times, duration):
    """Time cells of the sampled frames.

    frame_times: [F] seconds, ascending; duration: seconds (times past it are clipped to it).
    returns: (starts [F], ends [F]) float64, with starts[0] = 0, ends[-1] = duration and
    ends[i] = starts[i + 1].
    """
    times = np.clip(np.asarray(frame_times, dtype=np.float64), 0.0, float(duration))
    if times.ndim != 1 or len(times) == 0:
        raise ValueError(f"frame_times must be a non-empty 1-d array, got shape {times.shape}")
    if np.any(np.diff(times) < 0):
        raise ValueError("frame_times must be ascending")
    middles = (times[:-1] + times[1:]) / 2
    starts = np.concatenate([[0.0], middles])
    ends = np.concatenate([middles, [float(duration)]])
    return starts, ends


def moment_from_weights(frame_weights, frame_times, duration, mass=DEFAULT_MASS):
    """The moment that a video's frame weights point at.

    frame_weights: [F] non-negative (query-scoring softmax weights; they are divided by their
        sum here); frame_times: [F] seconds, ascending; duration: the video's length in seconds;
        mass: the share of weight the moment must hold, in (0, 1].
    returns: dict {"start", "end", "peak"} in seconds, 0 <= start <= peak <= end <= duration.
    """
    weights = np.asarray(frame_weights, dtype=np.float64)
    if weights.shape != np.shape(frame_times):
        raise ValueError(f"frame_weights {weights.shape} and frame_times "
                         f"{np.shape(frame_times)} must have the same shape")
    if not (0 < mass <= 1):
        raise ValueError(f"mass must be in (0, 1], got {mass!r}")
    total = weights.sum()
    if not (np.isfinite(weights).all() and (weights >= 0).all() and total > 0):
        raise ValueError("frame_weights must be finite, non-negative and not all zero")
    weights = weights / total
    peak = first_best(weights)  # peak_frame's, the shares computed once
    starts, ends = frame_cells(frame_times, duration)
    first, last = _shortest_run(weights, starts, ends, peak, mass)
    # The peak's time within the moment (np.clip's, without its overhead on scalars).
    peak_time = min(max(float(frame_times[peak]), float(starts[first])), float(ends[last]))
    return {"start": float(starts[first]), "end": float(ends[last]), "peak": peak_time}


def peak_frame(frame_weights):
    """The frame whose time moment_from_weights gives as the peak: the largest weight as a share
    of the total, the earliest of those within TIE_TOLERANCE of it. frame_weights: [F]
    non-negative, not all zero. returns: int."""
    weights = np.asarray(frame_weights, dtype=np.float64)
    return first_best(weights / weights.sum())


def first_best(values, tolerance=TIE_TOLERANCE):
    """The first index whose value is within `tolerance` of the largest: the earliest of equally
    good frames, however rounding ordered them. values: [N] finite, N >= 1. returns: int."""
    values = np.asarray(values, dtype=np.float64)
    return int(np.argmax(values >= values.max() - tolerance))


def _shortest_run(weights, starts, ends, peak, mass):
    """(first, last) frame of the run of cells that holds `peak` and at least `mass` of the
    weight: the shortest in seconds, then the heaviest, then the earliest (to TIE_TOLERANCE).

    weights: [F] summing to 1; starts, ends: [F] the cells (frame_cells). Every run considered
    is, for its first frame, the shortest that reaches the mass (a longer one from the same
    first frame is longer in seconds unless its extra cells have no width, taken in below).
    """
    cumulative = np.concatenate([[0.0], np.cumsum(weights)])  # cumulative[i] = sum(weights[:i])
    firsts = np.arange(peak + 1)
    # For each first frame, the smallest last frame (>= peak) whose run holds the mass; F when
    # even the run to the end holds less (never for the first frame 0: the whole video holds it).
    reach = np.searchsorted(cumulative, cumulative[firsts] + mass - TIE_TOLERANCE, side="left")
    lasts = np.maximum(reach - 1, peak)
    firsts, lasts = firsts[lasts < len(weights)], lasts[lasts < len(weights)]
    lengths = ends[lasts] - starts[firsts]
    shortest = lengths <= lengths.min() + TIE_TOLERANCE
    firsts, lasts = firsts[shortest], lasts[shortest]
    # Cells of no width after a shortest run add weight without length: take them in.
    widest = np.searchsorted(ends, starts[firsts] + lengths.min() + TIE_TOLERANCE, side="right")
    lasts = np.maximum(lasts, widest - 1)
    held = cumulative[lasts + 1] - cumulative[firsts]
    best = int(np.argmax(held >= held.max() - TIE_TOLERANCE))  # the heaviest, then the earliest
    return int(firsts[best]), int(lasts[best])
