"""Whether decoding can fit in memory, estimated before any video is decoded: a run that asks
for more frames than the machine holds should stop at once with the option to lower, not
after minutes of swapping or at the kernel's OOM killer."""
import itertools
import os
from pathlib import Path

from clip_hitchhiker.errors import ConfigError

# FramePreprocess converts a decoded uint8 frame to float32 and scales it before resizing: two
# float copies (4 bytes each) next to the uint8 frame at the video's own resolution.
_PREPROCESS_BYTES_PER_RAW_BYTE = 1 + 4 + 4


def decoding_memory_bytes(*, batch_size, num_frames, height, width, num_workers, prefetch,
                          crop=None, itemsize=4):
    """Bytes held at once while decoding: each worker's batch in progress at the video's
    resolution (with the preprocessing's float copies when crop is given, i.e. the workers
    preprocess), and the batches queued for the model (num_workers x prefetch, or 1 without
    workers), preprocessed to crop x crop in itemsize bytes, or raw uint8 when crop is None."""
    raw = batch_size * num_frames * 3 * height * width  # one batch of decoded uint8 frames
    in_progress = raw * (_PREPROCESS_BYTES_PER_RAW_BYTE if crop else 1)
    queued = batch_size * num_frames * 3 * crop * crop * itemsize if crop else raw
    return max(1, num_workers) * in_progress + (num_workers * prefetch or 1) * queued


def available_memory_bytes():
    """MemAvailable from /proc/meminfo, or None where it cannot be read (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def largest_resolution(video_paths, probe=3):
    """(height, width) of the largest of the first `probe` readable videos, from their stream
    headers (no frame is decoded), or None if none can be read."""
    import av

    sizes = []
    for path in itertools.islice((p for p in video_paths if os.path.isfile(p)), probe):
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                sizes.append((stream.codec_context.height, stream.codec_context.width))
        except Exception:  # a bad video is reported when it is decoded, not here
            continue
    return max(sizes, key=lambda hw: hw[0] * hw[1]) if sizes else None


def longest_video(video_paths):
    """(seconds, (height, width)): the longest duration and the largest resolution among the
    readable videos, from their headers (no frame is decoded), or None if none can be read.
    Every video is probed: decoding by time holds a whole video's frames at once."""
    import av

    seconds, sizes = 0.0, []
    for path in (p for p in video_paths if os.path.isfile(p)):
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                seconds = max(seconds, _header_seconds(container, stream))
                sizes.append((stream.codec_context.height, stream.codec_context.width))
        except Exception:  # a bad video is reported when it is decoded, not here
            continue
    return (seconds, max(sizes, key=lambda hw: hw[0] * hw[1])) if sizes else None


def _header_seconds(container, stream):
    """A video's duration as its header states it (the stream's, else the container's; 0 if
    neither does): an estimate for sizing, not the decoders' frame-exact duration."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return container.duration / 1_000_000 if container.duration is not None else 0.0


def check_decoding_memory(needed, available, *, batch_size, num_frames, num_workers,
                          resolution, lower="--num_frames, --batch_size or --num_workers"):
    """Raise ConfigError naming the options to lower if needed bytes exceed available ones."""
    if available is None or needed <= available:
        return
    height, width = resolution
    raise ConfigError(f"decoding needs about {needed / 2**30:.1f} GiB of memory ({num_workers} "
                      f"worker(s), batches of {batch_size} video(s) x {num_frames} frames of "
                      f"{width}x{height}), more than the {available / 2**30:.1f} GiB available; "
                      f"lower {lower}")
