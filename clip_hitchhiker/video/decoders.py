"""The video decoders behind data_loader.read_video: decord (the release's), PyAV and torchcodec,
and the rules they share, so that they return the same frames.

One frame table for all: a video's frames are its stream's packets sorted by presentation time
(decord and torchcodec's exact mode index a video this way too), so that "frame i" and the
frame count mean the same thing to every decoder. The table is read by demuxing with PyAV (no
decoding); decord's num_frames path keeps its own count (len(VideoReader)), which is built the
same way.

Frame choice is pure (choose_frames): by count (the release's uniform rule, on the table's
length) or by time (clip_hitchhiker.video.sampling: the frame nearest each 1/fps-second segment's
midpoint; with keyframes=True, the nearest key frame). Each decoder then only decodes a sorted
list of frame indices, seeking where the chosen frames are far apart.
"""
import contextlib
import ctypes.util
import functools
import itertools
import os
import re
import sys
import tempfile
from dataclasses import dataclass

import numpy as np
import torch

from clip_hitchhiker.errors import ConfigError, VideoDecodeError
from clip_hitchhiker.video.sampling import fps_sample_times, nearest_frame_indices

__all__ = ["DECODERS", "DECODE_ON", "FFMPEG_LIBRARIES", "FrameTable", "check_decoder",
           "choose_frames", "decode_frames", "decoder_id", "decoder_line", "decoder_log",
           "frame_table", "resolve_decoder"]

DECODERS = ("decord", "pyav", "torchcodec", "auto")
DECODE_ON = ("cpu", "device")
# The FFmpeg shared libraries torchcodec loads (PyAV and decord bundle their own).
FFMPEG_LIBRARIES = ("avutil", "avcodec", "avformat", "avdevice", "avfilter", "swscale",
                    "swresample")
FFMPEG_INSTALL_HINT = ("install FFmpeg's shared libraries (Debian/Ubuntu: apt-get install "
                       "libavdevice59 or the ffmpeg package; conda: conda install ffmpeg), or "
                       "use --decoder pyav")


@dataclass(frozen=True)
class FrameTable:
    """A video stream's frames in presentation order, from its packets (nothing decoded).

    pts: int64 [N] presentation timestamps in time_base units; key: bool [N] key frames;
    start: the first frame's time and end: the last frame's end, in seconds.
    """
    pts: np.ndarray
    key: np.ndarray
    time_base: float
    start: float
    end: float

    @property
    def times(self):
        """float64 [N] presentation times in seconds."""
        return self.pts * self.time_base

    @property
    def duration(self):
        return self.end - self.start


# ----------------------------------------------------------------------------------------------
# Choosing the decoder


@functools.cache
def decord_imports():
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_decoder(decoder):
    """The decoder that reads the videos: auto is decord when it imports, else PyAV."""
    if decoder not in DECODERS:
        raise ConfigError(f"--decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder == "auto":
        return "decord" if decord_imports() else "pyav"
    return decoder


def decoder_id(decoder, decode_on="cpu"):
    """What the cache key and the report record: the decoder that reads the videos (auto's
    choice, with its per-video fallback) and where it decodes."""
    chosen = resolve_decoder(decoder)
    fallback = ", pyav where decord fails" if decoder == "auto" and chosen == "decord" else ""
    return f"{chosen}{fallback}" + (" on the device" if decode_on == "device" else "")


def decoder_line(decoder, decode_on="cpu"):
    """The line a run prints first: which decoder reads the videos, and why (for auto)."""
    chosen = resolve_decoder(decoder)
    if decoder == "auto":
        why = ("decord imports; PyAV reads any video decord cannot" if chosen == "decord"
               else "decord does not import here")
        return f"decoder: {chosen} (auto: {why})"
    return f"decoder: {chosen}" + (" on the device (CUDA)" if decode_on == "device" else "")


def check_decoder(decoder, decode_on="cpu"):
    """Raise ConfigError (one line, what to do) unless the decoder can run here."""
    chosen = resolve_decoder(decoder)
    if decode_on not in DECODE_ON:
        raise ConfigError(f"--decode_on must be cpu or device, got {decode_on!r}")
    if decode_on == "device" and chosen != "torchcodec":
        raise ConfigError(f"--decode_on device needs --decoder torchcodec (got {decoder})")
    if chosen == "decord" and not decord_imports():
        raise ConfigError("--decoder decord: decord does not import here (its wheels are for "
                          "x86-64 Linux and Windows); use --decoder pyav or auto")
    if chosen == "torchcodec":
        load_torchcodec()
    if chosen == "pyav" or decoder == "auto":
        _import_av()


def load_torchcodec():
    """torchcodec's VideoDecoder, or ConfigError naming the FFmpeg library that is missing.

    Loading is the test: FFmpeg may sit where ctypes.util.find_library does not look
    (LD_LIBRARY_PATH without `ld` on the machine), so the libraries are looked up only to
    explain a failed load."""
    try:
        from torchcodec.decoders import VideoDecoder
        from torchcodec._core import ops
    except ImportError as e:
        raise ConfigError(f"--decoder torchcodec: torchcodec is not installed ({e}); pip install "
                          "torchcodec, or use --decoder pyav") from e
    try:
        # Loads the FFmpeg-dependent libraries now (torchcodec otherwise does on first use).
        getattr(ops, "load_core_libraries", lambda: None)()
    except (OSError, RuntimeError) as e:
        missing = [name for name in FFMPEG_LIBRARIES if ctypes.util.find_library(name) is None]
        if missing:
            raise ConfigError(f"--decoder torchcodec: FFmpeg's shared library lib{missing[0]} is "
                              f"not installed (torchcodec loads FFmpeg from the system); "
                              f"{FFMPEG_INSTALL_HINT}") from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--decoder torchcodec: torchcodec cannot load FFmpeg ({first}); the "
                          f"installed FFmpeg may be a version it does not support; "
                          f"{FFMPEG_INSTALL_HINT}") from e
    return VideoDecoder


def _import_av():
    try:
        import av
    except ImportError as e:
        raise ConfigError(f"PyAV is not installed ({e}); pip install av") from e
    return av


# ----------------------------------------------------------------------------------------------
# The frame table and the choice of frames (pure)


def frame_table(video_path):
    """The video stream's FrameTable, by demuxing its packets with PyAV (nothing decoded)."""
    av = _import_av()
    with av.open(str(video_path)) as container:
        stream = container.streams.video[0]
        table = _TableBuilder(float(stream.time_base))
        for packet in container.demux(stream):
            table.add(packet)
    return table.build(video_path)


class _TableBuilder:
    """Collects a FrameTable from a stream's packets, in the order the demuxer gives them."""

    def __init__(self, time_base):
        self.time_base, self.pts, self.key, self.ends = time_base, [], [], []

    def add(self, packet):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None:  # the demuxer's final empty packet
            return
        self.pts.append(stamp)
        self.key.append(packet.is_keyframe)
        self.ends.append(stamp + (packet.duration or 0))

    def build(self, video_path):
        if not self.pts:
            raise VideoDecodeError(f"video has no frames: {video_path}")
        order = np.argsort(np.asarray(self.pts, dtype=np.int64), kind="stable")
        pts = np.asarray(self.pts, dtype=np.int64)[order]
        key = np.asarray(self.key, dtype=bool)[order]
        start = float(pts[0] * self.time_base)
        end = float(max(self.ends) * self.time_base)
        if end <= float(pts[-1] * self.time_base):  # no packet durations: one interval more
            step = float(np.median(np.diff(pts))) if len(pts) > 1 else 1.0
            end = float((pts[-1] + step) * self.time_base)
        return FrameTable(pts, key, self.time_base, start, end)


def choose_frames(num_available, sample=None, num_frames=None, *, table=None, fps=None,
                  max_frames=None, keyframes=False):
    """The frame indices to decode.

    By count: sample(num_available, num_frames), as the caller's rule gives them (repeats
    allowed). By time (fps, with a FrameTable): for each 1/fps-second segment of [start, end)
    (at most max_frames, sampling.fps_sample_times), the frame nearest its midpoint, or with
    keyframes the nearest key frame; each frame once, ascending.
    returns: list of ints.
    """
    if fps is None:
        return [int(i) for i in sample(num_available, num_frames)]
    targets = table.start + fps_sample_times(table.duration, fps, max_frames)
    candidates = np.flatnonzero(table.key) if keyframes else np.arange(len(table.pts))
    if len(candidates) == 0:
        candidates = np.arange(len(table.pts))[:1]  # no flagged key frame: the first frame
    nearest = candidates[nearest_frame_indices(targets, table.times[candidates])]
    return [int(i) for i in np.unique(nearest)]


# ----------------------------------------------------------------------------------------------
# Decoding a list of frame indices


def decode_frames(decoder, video_path, request, num_threads=1, device="cpu"):
    """Decode the frames request chooses, with decoder ("decord", "pyav" or "torchcodec").

    request: {"num_frames", "sample"} or {"fps", "max_frames", "keyframes"}.
    returns: (uint8 [S, 3, H, W] RGB on device, info: {"decoder", "frames": the frame count,
    "indices": [S], "resolution": [H, W]}, plus "times" [S] and "duration" for time-based
    requests: seconds from the first frame, as a player shows them (a stream whose first
    timestamp is not 0, common in WebM and MPEG-TS, would otherwise shift every moment).
    """
    readers = {"decord": _read_decord, "pyav": _read_pyav, "torchcodec": _read_torchcodec}
    if decoder not in readers:
        raise ConfigError(f"decoder must be one of {', '.join(readers)}, got {decoder!r}")
    video_path = str(video_path)
    if not os.path.isfile(video_path):
        raise VideoDecodeError(f"video file not found: {video_path}")
    try:
        frames, count, indices, times, table = readers[decoder](video_path, request,
                                                                num_threads, device)
    except (VideoDecodeError, ConfigError):
        raise
    except Exception as e:  # DECORDError, av.error.FFmpegError, RuntimeError from torchcodec
        hint = "; try --decoder pyav" if decoder == "decord" else ""
        message = " ".join(str(e).split())[:300]
        raise VideoDecodeError(f"cannot decode {video_path} with {decoder}: {message}"
                               f"{hint}") from e
    info = {"decoder": decoder, "frames": int(count), "indices": indices,
            "resolution": [int(frames.shape[2]), int(frames.shape[3])]}
    if "fps" in request:
        info["times"] = [float(t) - table.start for t in times]
        info["duration"] = table.duration
    return frames, info


def _chosen(video_path, request, count, table):
    if count < 1:
        raise VideoDecodeError(f"video has no frames: {video_path}")
    if "fps" in request:
        return choose_frames(count, table=table, fps=request["fps"],
                             max_frames=request.get("max_frames"),
                             keyframes=request.get("keyframes", False))
    return choose_frames(count, request["sample"], request["num_frames"])


def _expand(unique_frames, unique_indices, indices):
    """unique_frames [U, ...] for the sorted unique_indices, repeated to follow indices (no copy
    when indices are those: hours of frames are large)."""
    if list(unique_indices) == list(indices):
        return unique_frames
    position = {index: row for row, index in enumerate(unique_indices)}
    return unique_frames[torch.tensor([position[i] for i in indices], dtype=torch.long)]


def _read_decord(video_path, request, num_threads, device):
    import decord
    from torch.utils.dlpack import from_dlpack

    reader = decord.VideoReader(video_path, num_threads=num_threads)
    table = frame_table(video_path) if "fps" in request else None
    count = len(reader)
    if table is not None and len(table.pts) != count:
        raise VideoDecodeError(f"{video_path}: decord counts {count} frames, the stream has "
                               f"{len(table.pts)} packets; use --decoder pyav")
    indices = _chosen(video_path, request, count, table)
    batch = reader.get_batch(indices)
    # DLPack hands over decord's buffer without the copy that asnumpy() makes.
    frames = from_dlpack(batch.to_dlpack()).permute(0, 3, 1, 2)  # [S, 3, H, W]
    times = table.times[indices] if table is not None else None
    return frames, count, indices, times, table


def _read_torchcodec(video_path, request, num_threads, device):
    VideoDecoder = load_torchcodec()
    table = frame_table(video_path)
    # Exact mode indexes the frames by scanning the packets: the same table as frame_table's.
    reader = VideoDecoder(video_path, seek_mode="exact", num_ffmpeg_threads=num_threads,
                          device=str(device))
    count = reader.metadata.num_frames
    if len(table.pts) != count:
        raise VideoDecodeError(f"{video_path}: torchcodec counts {count} frames, the stream has "
                               f"{len(table.pts)} packets; use --decoder pyav")
    indices = _chosen(video_path, request, count, table)
    unique = sorted(set(indices))
    batch = reader.get_frames_at(unique)
    frames = _expand(batch.data, unique, indices)  # [S, 3, H, W]
    times = _expand(batch.pts_seconds, unique, indices).tolist()
    return frames, count, indices, times, table


def _read_pyav(video_path, request, num_threads, device):
    av = _import_av()

    def open_stream():
        container = av.open(video_path)
        stream = container.streams.video[0]
        stream.codec_context.thread_count = num_threads
        if request.get("keyframes"):
            stream.codec_context.skip_frame = "NONKEY"
        return container, stream

    if not request.get("keyframes"):
        table = frame_table(video_path)
        indices = _chosen(video_path, request, len(table.pts), table)
        unique = sorted(set(indices))
        images, times, _ = _decode_at(open_stream, table, unique)
    else:
        table, decoded = _key_frames_in_one_pass(open_stream, request, video_path)
        indices = _chosen(video_path, request, len(table.pts), table)
        unique = sorted(set(indices))
        missing = [i for i in unique if int(table.pts[i]) not in decoded]
        if missing:  # chosen for the true duration, not the declared one
            images, times, _ = _decode_at(open_stream, table, missing, keyframes=True)
            decoded.update({int(table.pts[i]): (image, time)
                            for i, image, time in zip(missing, images, times)})
        images = _stacked([decoded[int(table.pts[i])][0] for i in unique])
        times = [decoded[int(table.pts[i])][1] for i in unique]
    frames = torch.from_numpy(images).permute(0, 3, 1, 2)  # [U, 3, H, W]
    times = torch.tensor(times, dtype=torch.float64)
    return (_expand(frames, unique, indices), len(table.pts), indices,
            _expand(times, unique, indices).tolist(), table)


def _stacked(images):
    """uint8 [U, H, W, 3] from U arrays or PyAV frames (converted to RGB here), in memory that
    torch's allocator gives (see _decode_at)."""
    reformatter = _rgb_reformatter()
    out = None
    for row, image in enumerate(images):
        if not isinstance(image, np.ndarray):
            image = _to_rgb(image, reformatter)
        if out is None:
            out = torch.empty((len(images), *image.shape), dtype=torch.uint8).numpy()
        out[row] = image
    return out


def _key_frames_in_one_pass(open_stream, request, video_path):
    """keyframes sampling with one demuxing pass: the frame table is read and the key frames are
    decoded together, where a table first would read every packet twice (a tenth of the time
    on an hour of 480p).

    A key frame is decoded when it would be chosen for the container's declared duration
    (sampling.fps_sample_times, the nearest key frame to each segment midpoint): whether it is
    can be told once the next key frame is read, so its packet waits until then. The true
    duration is only known at the end; the caller decodes any frame chosen by it and not here
    (none, unless the declared duration is wrong). Without a declared duration every key frame
    is decoded.
    returns: (FrameTable, {pts: (PyAV frame, time in seconds)} for the key frames decoded).
    """
    container, stream = open_stream()
    context = stream.codec_context
    table = _TableBuilder(float(stream.time_base))
    decoded = {}
    try:
        targets = _declared_targets(container, stream, request)
        held, before = None, None  # the key packet waiting, and the key frame time before it

        def decode(packet):
            for frame in context.decode(packet):
                if frame.pts is not None:
                    decoded[int(frame.pts)] = (frame, float(frame.pts * table.time_base))

        for packet in container.demux(stream):
            table.add(packet)
            if packet.size and not packet.is_keyframe:
                continue
            at = None if packet.pts is None else packet.pts * table.time_base
            if held is not None:
                held_at = held.pts * table.time_base
                if _nearest_to_a_target(targets, before, held_at, at):
                    decode(held)
                before, held = held_at, None
            if packet.size:
                held = packet if packet.pts is not None else None
                if held is None:  # no timestamp to choose by: decode it, keep what has one
                    decode(packet)
            else:
                decode(None)  # the end: flush the decoder's delayed frames
    finally:
        container.close()
    return table.build(video_path), decoded


def _declared_targets(container, stream, request):
    """The segment midpoints (seconds, absolute) for the container's declared start and
    duration, or None where it declares no duration."""
    time_base = float(stream.time_base)
    if stream.duration:
        duration = stream.duration * time_base
    elif container.duration:
        duration = container.duration / 1_000_000
    else:
        return None
    start = stream.start_time * time_base if stream.start_time is not None else 0.0
    return start + fps_sample_times(duration, request["fps"], request.get("max_frames"))


def _nearest_to_a_target(targets, before, at, after):
    """Whether a key frame at time `at` (between key frames at `before` and `after`, either
    None at the ends) is the nearest key frame to some target; ties go to the earlier frame,
    as in choose_frames. targets: sorted seconds, or None (every key frame is)."""
    if targets is None:
        return True
    low = -np.inf if before is None else (before + at) / 2
    high = np.inf if after is None else (at + after) / 2
    first = np.searchsorted(targets, low, side="right")  # a target at low goes to before
    return first < len(targets) and targets[first] <= high


# Seek only past at least this many frames. A seek cost about as much as decoding 8 frames of
# 480p H.264 here (the decoder restarts and refills its reorder delay), a figure that moved with
# the machine's load; between wanted frames only the frames others refer to are decoded (about
# two in three with B-frames: _decoded_frames), so skipping 12 frames saves about 8 decodes.
# fps 1 on a 30 fps video with a key frame every 2 s seeks at each key frame (14 frames on).
SEEK_COST_FRAMES = 12
# With only key frames decoded (skip_frame NONKEY), a seek costs about this many key frames.
SEEK_COST_KEY_FRAMES = 3


def _decode_at(open_stream, table, wanted, keyframes=False):
    """Decode the frames at the sorted indices wanted (PyAV). Seek to the key frame before a
    wanted frame when that skips more decoding than a seek costs (SEEK_COST_FRAMES, or with
    keyframes, where only key frames are decoded, SEEK_COST_KEY_FRAMES), otherwise decode
    forward; between wanted frames, frames that no other frame refers to are not decoded at all
    (_decoded_frames). A seek that does not land on the key frame asked for (AVI, which indexes
    decode order, with B-frames) turns seeking off for the video: it is then decoded from its
    start, so the frames equal decoding everything and picking.
    A frame is the wanted one when its timestamp is the table's; should the decoder never show
    that timestamp (a damaged stream), the first frame past it stands in, or the last decoded.
    open_stream() -> (container, video stream).
    returns: (uint8 [U, H, W, 3] RGB, [U] times in seconds, frames decoded), U = len(wanted).
    """
    key_positions = np.flatnonzero(table.key)
    keep = {int(table.pts[i]) for i in wanted}
    reformatter = _rgb_reformatter()
    decoded = [0]  # frames the decoder output, for the caller's report
    container, stream = open_stream()
    images, times = None, []  # images: filled in place, so that no frame is held twice
    frames, position, seekable = None, None, True  # position: the next index decoded
    try:
        for index in wanted:
            before = np.searchsorted(key_positions, index, side="right") - 1
            key_before = int(key_positions[before]) if before >= 0 else 0
            skipped = key_before - position if frames is not None else 0
            if keyframes and frames is not None:  # key frames in [position, key_before)
                skipped = int(np.searchsorted(key_positions, key_before) -
                              np.searchsorted(key_positions, position))
            if frames is None and key_before == 0:  # from the start: no seek needed
                frames = _decoded_frames(container, stream, keep, keyframes, decoded)
            elif frames is None or (seekable and (position > index or skipped >= (
                    SEEK_COST_KEY_FRAMES if keyframes else SEEK_COST_FRAMES))):
                container.seek(int(table.pts[key_before]), stream=stream, backward=True,
                               any_frame=False)
                frames = _decoded_frames(container, stream, keep, keyframes, decoded)
                landed = _first_at_or_after(frames, table.pts[key_before])
                if landed is None or landed.pts != table.pts[key_before]:
                    seekable = False
                    container.close()
                    container, stream = open_stream()
                    frames = _decoded_frames(container, stream, keep, keyframes, decoded)
                else:
                    frames = itertools.chain([landed], frames)
            found = _first_at_or_after(frames, table.pts[index])
            if found is None:  # the stream ended before this frame: the last one stands in
                if not times:
                    raise VideoDecodeError("no frame could be decoded")
                images[len(times)] = images[len(times) - 1]
                times.append(times[-1])
                continue
            image = _to_rgb(found, reformatter)
            if images is None:
                # torch's allocator, not numpy's: numpy asks for huge pages on large arrays,
                # which made first touching an hour's frames 4x slower on the test machine.
                images = torch.empty((len(wanted), *image.shape), dtype=torch.uint8).numpy()
            images[len(times)] = image
            stamp = found.pts if found.pts is not None else table.pts[index]
            position = int(np.searchsorted(table.pts, stamp, side="right"))
            times.append(float(stamp * table.time_base))
    finally:
        container.close()
    return images, times, decoded[0]


def _decoded_frames(container, stream, keep, keyframes, decoded):
    """The frames of stream from the container's position, in presentation order.

    A packet whose timestamp is in keep is decoded in full. Any other is decoded only as far as
    later frames need it: with skip_frame NONREF the decoder drops a frame that no other frame
    refers to (H.264/HEVC non-reference pictures, MPEG-4 B-frames), so the frames kept are
    bit for bit those of decoding everything. With keyframes (skip_frame NONKEY, set by the
    caller) only key packets are sent at all. decoded: [count], increased per frame output.
    """
    context = stream.codec_context
    for packet in container.demux(stream):
        if keyframes:
            if packet.size and not packet.is_keyframe:
                continue
        else:
            wanted = packet.pts is None or packet.pts in keep
            context.skip_frame = "DEFAULT" if wanted else "NONREF"
        for frame in context.decode(packet):  # the demuxer's last, empty packet flushes
            decoded[0] += 1
            yield frame


def _rgb_reformatter():
    """One PyAV reformatter for a video's frames: frame.to_ndarray(format="rgb24") builds a new
    swscale context for every frame, which took 2 of its 3 ms per 480p frame here."""
    from av.video.reformatter import VideoReformatter
    return VideoReformatter()


def _to_rgb(frame, reformatter):
    """uint8 [H, W, 3] RGB of a PyAV frame: what frame.to_ndarray(format="rgb24") gives."""
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


def _first_at_or_after(frames, target):
    """The first frame from the iterator frames whose timestamp is target or later; else the
    last frame it gives (None when none)."""
    last = None
    for frame in frames:
        stamp = frame.pts if frame.pts is not None else frame.dts
        if stamp is not None and stamp >= target:
            return frame
        last = frame
    return last


# ----------------------------------------------------------------------------------------------
# What decoders print

# "[mov,mp4,... @ 0x55d0]" (FFmpeg) and "[00:42:13] /src/video/video_reader.cc:83:" (decord).
_LOG_PREFIX = re.compile(r"^\[[^\]]*\]\s*(\S+\.(cc|h|cpp):\d+:\s*)?")


@contextlib.contextmanager
def decoder_log():
    """Keep what a decoder writes to file descriptor 2 off the terminal for the duration: decord
    prints its C++ errors and FFmpeg's there, past any logger setting (decord.logging only sets
    FFmpeg's level). yields: a list that holds, afterwards, the lines written, their
    "[...] file.cc:N:" prefixes removed."""
    lines = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            lines += [_LOG_PREFIX.sub("", line).strip() for line in text.splitlines()
                      if line.strip()]
