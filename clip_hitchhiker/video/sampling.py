"""Time-based frame sampling, shared by the search indexer, the decoders and the moment benchmark.

Pure functions of timestamps (seconds): no decoder, no files. The paper's uniform rule by frame
count stays `data_loader.sample_frame_indices`.

fps sampling: the video [0, duration) is cut into consecutive 1/fps-second segments (the last one
ends at the video's end), and each segment is represented by the frame whose presentation time
is nearest the segment's midpoint. Past max_frames segments, the segments widen to
duration / max_frames seconds, so that the whole video is still covered evenly.
"""
import math

import numpy as np

__all__ = ["fps_segment_edges", "fps_sample_times", "nearest_frame_indices"]

# Durations are floats read from containers: a segment count within this of a whole number is
# that whole number (10.0 s at 1 fps is 10 segments, not 11 from 10.000000001).
_COUNT_TOLERANCE = 1e-6


def fps_segment_edges(duration, fps, max_frames=None):
    """Edges of the sampling segments, in seconds.

    duration: seconds > 0; fps: segments per second > 0; max_frames: optional cap >= 1.
    returns: float64 [S + 1] array from 0 to duration, S = min(ceil(duration * fps), max_frames).
    """
    duration, fps = _positive(duration, "duration"), _positive(fps, "fps")
    if max_frames is not None and (isinstance(max_frames, bool) or int(max_frames) != max_frames
                                   or max_frames < 1):
        raise ValueError(f"max_frames must be a whole number >= 1 or None, got {max_frames!r}")
    count = max(1, math.ceil(duration * fps - _COUNT_TOLERANCE))
    if max_frames is not None and count > max_frames:
        return np.linspace(0.0, duration, int(max_frames) + 1)
    edges = np.arange(count + 1, dtype=np.float64) / fps
    edges[-1] = duration
    return edges


def fps_sample_times(duration, fps, max_frames=None):
    """Midpoints of the sampling segments (see fps_segment_edges). returns: float64 [S]."""
    edges = fps_segment_edges(duration, fps, max_frames)
    return (edges[:-1] + edges[1:]) / 2


def nearest_frame_indices(target_times, frame_times):
    """For each target time, the index of the frame whose presentation time is nearest.

    target_times: [S] seconds; frame_times: [N] presentation times, ascending (a variable frame
    rate is fine). An exact tie goes to the earlier frame.
    returns: int64 [S] indices into frame_times, non-decreasing for non-decreasing targets
    (a target rate above the video's frame rate repeats frames; callers that want each frame
    once take np.unique).
    """
    frame_times = np.asarray(frame_times, dtype=np.float64)
    target_times = np.asarray(target_times, dtype=np.float64)
    if frame_times.ndim != 1 or len(frame_times) == 0:
        raise ValueError(f"frame_times must be a non-empty 1-d array, got shape "
                         f"{frame_times.shape}")
    if np.any(np.diff(frame_times) < 0):
        raise ValueError("frame_times must be ascending (presentation order)")
    after = np.searchsorted(frame_times, target_times, side="left").clip(1, len(frame_times) - 1)
    if len(frame_times) == 1:
        return np.zeros(len(target_times), dtype=np.int64)
    before = after - 1
    later_is_nearer = (frame_times[after] - target_times) < (target_times - frame_times[before])
    return np.where(later_is_nearer, after, before).astype(np.int64)


def _positive(value, name):
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value
