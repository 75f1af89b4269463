"""A hit's moment as a short MP4 (PyAV): the video's packets copied from the key frame at or
before the moment's start where MP4 can hold its codec (fast, lossless, starting up to a GOP
early), else decoded and re-encoded as H.264 from the frame showing at the start. Audio is
copied where MP4 holds its codec, else re-encoded as AAC.

write_clip makes the file; place_clip puts it in a user's folder under a name that never
replaces a file the tool did not write; browser_playable says whether a browser plays a video
as it is, or needs such a clip.
"""
import errno
import os
from fractions import Fraction
from pathlib import Path

from clip_hitchhiker.errors import VideoDecodeError

# Codecs MP4 holds that PyAV can copy into it; BROWSER_* are those every current browser plays.
MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "mpeg4", "av1", "vp9"})
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})
BROWSER_CONTAINERS = frozenset({".mp4", ".m4v", ".mov", ".webm"})
BROWSER_VIDEO_CODECS = frozenset({"h264", "vp8", "vp9", "av1"})
BROWSER_AUDIO_CODECS = frozenset({"aac", "mp3", "opus", "vorbis", "flac"})
BROWSER_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p", "nv12"})  # H.264 4:4:4 is not


def browser_playable(path):
    """True where Chromium, Firefox and Safari all play the file as it is: an MP4/MOV/WebM
    container with 4:2:0 H.264, VP8, VP9 or AV1 video and browser-playable audio (or none)."""
    import av

    if Path(path).suffix.lower() not in BROWSER_CONTAINERS:
        return False
    try:
        with av.open(str(path)) as container:
            return (browser_decodes(container.streams.video[0]) and
                    all(a.codec_context.name in BROWSER_AUDIO_CODECS
                        for a in container.streams.audio))
    except (av.error.FFmpegError, IndexError):
        return False


def browser_decodes(stream):
    """True if every browser decodes this PyAV video stream's codec and pixel format."""
    context = stream.codec_context
    return context.name in BROWSER_VIDEO_CODECS and (
        context.name != "h264" or (context.format is not None and
                                   context.format.name in BROWSER_PIXEL_FORMATS))


def write_clip(video, start, end, out_path, for_browser=False, video_name=None,
               clip_path=None):
    """Write [start, end] seconds of video (a path or a binary file object) to out_path, an
    MP4. Copies the video packets from the key frame at or before start where MP4 holds the
    codec (for_browser: where every browser also decodes it); otherwise re-encodes as H.264
    from the frame showing at start. returns: {"start": the clip's time 0 in the video
    (seconds), "end": its last frame's time in the video, "method": "copy" or "encode"}.
    video_name, clip_path: what a failure's one line calls the video (a file object from
    os.fdopen is named by its descriptor number) and the clip (out_path may be a temporary
    file, moved into place afterwards); by default video's path and out_path."""
    import av

    if not end > start >= 0:
        raise ValueError(f"a clip needs 0 <= start < end, got start={start}, end={end}")
    try:
        with av.open(video if hasattr(video, "read") else str(video)) as source, \
                av.open(str(out_path), "w", format="mp4") as target:
            stream = source.streams.video[0]
            copy = (browser_decodes(stream) if for_browser
                    else stream.codec_context.name in MP4_VIDEO_CODECS)
            audio = source.streams.audio[0] if source.streams.audio else None
            writer = _CopyClip if copy else _EncodeClip
            clip = writer(source, target, stream, audio, start, end)
            clip.run()
            return {"start": clip.first_time, "end": clip.last_time,
                    "method": "copy" if copy else "encode"}
    except (av.error.FFmpegError, IndexError) as e:
        name = video_name if video_name is not None else getattr(video, "name", video)
        cause = getattr(e, "strerror", None) or e  # FFmpeg's errors repeat the file's name
        raise VideoDecodeError(f"cannot cut a clip of {name} into "
                               f"{clip_path if clip_path is not None else out_path} "
                               f"({cause})") from e


def _stream_like(target, stream):
    """An output stream that takes stream's packets as they are (PyAV >= 14 names it
    add_stream_from_template; before, add_stream(template=))."""
    if hasattr(target, "add_stream_from_template"):
        return target.add_stream_from_template(stream)
    return target.add_stream(template=stream)


def _seconds(value, time_base):
    return float(value * time_base)


class _CopyClip:
    """Packets copied as they are; timestamps shifted so that the key frame is at 0."""

    def __init__(self, source, target, video, audio, start, end):
        self.source, self.target, self.video, self.start, self.end = (source, target, video,
                                                                      start, end)
        self.out_video = _stream_like(target, video)
        self.audio, self.audio_out = audio, _audio_output(target, audio)
        self.first_time = self.last_time = None

    def run(self):
        self.source.seek(int(self.start / self.video.time_base), stream=self.video,
                         backward=True, any_frame=False)
        streams = [self.video] + ([self.audio] if self.audio is not None else [])
        for packet in self.source.demux(streams):
            if packet.pts is None and packet.dts is None:
                continue  # the flush packets demux ends with
            if packet.stream is self.video:
                if not self._video(packet):
                    break
            elif self.first_time is not None:
                self._audio(packet)
        if self.first_time is None:
            raise VideoDecodeError(f"{self.source.name} has no key frame before {self.end} s")
        self.audio_out.flush(self.target)

    def _video(self, packet):
        """Mux one video packet; False once the packets (in decode order) pass the end."""
        time_base = self.video.time_base
        if self.first_time is None:
            if not packet.is_keyframe:
                return True
            self.first_time = _seconds(packet.pts, time_base)
        if _seconds(packet.dts if packet.dts is not None else packet.pts, time_base) >= self.end:
            return False
        shift = round(self.first_time / time_base)
        self.last_time = max(self.last_time or 0.0, _seconds(packet.pts, time_base))
        packet.pts -= shift
        if packet.dts is not None:
            packet.dts -= shift
        packet.stream = self.out_video
        self.target.mux(packet)
        return True

    def _audio(self, packet):
        time = _seconds(packet.pts, self.audio.time_base)
        if self.first_time <= time < self.end:
            self.audio_out.add(self.target, packet, self.first_time)


class _EncodeClip:
    """Frames decoded from the key frame before start, encoded as H.264 (4:2:0, even sizes) from
    the frame showing at start until end."""

    def __init__(self, source, target, video, audio, start, end):
        self.source, self.video, self.target, self.start, self.end = (source, video, target,
                                                                      start, end)
        rate = video.average_rate or video.guessed_rate or Fraction(25)
        self.out_video = target.add_stream("libx264", rate=rate)
        self.out_video.width = max(2, video.codec_context.width // 2 * 2)
        self.out_video.height = max(2, video.codec_context.height // 2 * 2)
        self.out_video.pix_fmt = "yuv420p"
        self.out_video.time_base = Fraction(1, 90000)
        self.out_video.options = {"crf": "20", "preset": "veryfast"}
        self.audio, self.audio_out = audio, _audio_output(target, audio)
        self.first_time = self.last_time = None

    def run(self):
        self.source.seek(int(self.start / self.video.time_base), stream=self.video,
                         backward=True, any_frame=False)
        held = None  # the last frame before start: it is showing at start
        for frame in self.source.decode(self.video):
            time = frame.time
            if time is None:
                continue
            if time <= self.start:
                held = frame
                continue
            if held is not None:
                self._encode(held)
                held = None
            if time >= self.end:
                break
            self._encode(frame)
        if held is not None:
            self._encode(held)
        if self.first_time is None:
            raise VideoDecodeError(f"{self.source.name} has no frame between {self.start} and "
                                   f"{self.end} s")
        for packet in self.out_video.encode():
            self.target.mux(packet)
        self._copy_audio()

    def _encode(self, frame):
        import av

        if self.first_time is None:
            self.first_time = frame.time
        self.last_time = frame.time
        # Through RGB: swscale takes full-range (yuvj, JPEG) sources as limited-range when it
        # converts straight to yuv420p, and the colours would shift.
        rgb = frame.to_ndarray(format="rgb24", width=self.out_video.width,
                               height=self.out_video.height)
        image = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        image.pts = round((frame.time - self.first_time) * 90000)
        image.time_base = Fraction(1, 90000)
        for packet in self.out_video.encode(image):
            self.target.mux(packet)

    def _copy_audio(self):
        if self.audio is None:
            return
        self.source.seek(int(self.first_time / self.audio.time_base), stream=self.audio,
                         backward=True)
        for packet in self.source.demux(self.audio):
            if packet.pts is None:
                continue
            time = _seconds(packet.pts, self.audio.time_base)
            if time >= self.end:
                break
            if time >= self.first_time:
                self.audio_out.add(self.target, packet, self.first_time)
        self.audio_out.flush(self.target)


def _audio_output(target, audio):
    if audio is None:
        return _NoAudio()
    if audio.codec_context.name in MP4_AUDIO_CODECS:
        return _AudioCopy(target, audio)
    return _AudioEncode(target, audio)


class _NoAudio:
    def add(self, target, packet, first_time):
        pass

    def flush(self, target):
        pass


class _AudioCopy:
    def __init__(self, target, audio):
        self.audio, self.out = audio, _stream_like(target, audio)

    def add(self, target, packet, first_time):
        shift = round(first_time / self.audio.time_base)
        packet.pts -= shift
        packet.dts = packet.pts if packet.dts is None else packet.dts - shift
        packet.stream = self.out
        target.mux(packet)

    def flush(self, target):
        pass


class _AudioEncode:
    """Audio MP4 cannot hold (PCM, Vorbis in MKV, ...) decoded and encoded as AAC."""

    def __init__(self, target, audio):
        import av

        rate = audio.codec_context.sample_rate or 48000
        self.audio, self.out = audio, target.add_stream("aac", rate=rate)
        self.out.layout = "stereo"
        self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate)
        self.next_pts = None

    def add(self, target, packet, first_time):
        for frame in packet.decode():
            if self.next_pts is None:
                self.next_pts = max(0, round((frame.time - first_time) * self.out.rate))
            for resampled in self.resampler.resample(frame):
                self._encode(target, resampled)

    def _encode(self, target, frame):
        frame.pts, frame.time_base = self.next_pts, Fraction(1, self.out.rate)
        self.next_pts += frame.samples
        for packet in self.out.encode(frame):
            target.mux(packet)

    def flush(self, target):
        if self.next_pts is None:
            return
        for resampled in self.resampler.resample(None):
            self._encode(target, resampled)
        for packet in self.out.encode():
            target.mux(packet)


# ----------------------------------------------------------------------------------------------
# Naming in a user's folder


def clip_name(video_path, start, end):
    """"<video stem>_<start>-<end>.mp4", times in seconds to the millisecond."""
    return f"{Path(video_path).stem}_{start:.3f}-{end:.3f}.mp4"


# What os.link raises where the file system has no hard links: FAT and exFAT (EPERM), some
# SMB and FUSE mounts (ENOTSUP, ENOSYS), a folder that is another mount than it looks (EXDEV).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP,
                            errno.ENOSYS})


def place_clip(made, folder, name):
    """Move the finished clip `made` (a file in folder) into folder under `name`, never
    replacing a file: an existing file of the same name and bytes (this tool's earlier output)
    is kept and `made` dropped; any other is left alone and the clip takes "<stem> (2).mp4",
    "(3)", ... returns: the path the clip has."""
    folder, made = Path(folder), Path(made)
    stem, suffix = Path(name).stem, Path(name).suffix
    for number in range(1, 10_000):
        path = folder / (name if number == 1 else f"{stem} ({number}){suffix}")
        try:
            _claim(made, path)
        except FileExistsError:
            if _same_bytes(made, path):
                break
            continue
        break
    else:
        raise FileExistsError(f"{folder} holds 9999 files named {stem} (n){suffix}")
    if made.exists():
        made.unlink()
    return path


def _claim(made, path):
    """Give the complete file `made` the name path, FileExistsError if path exists (a file, a
    folder, a link, dangling or not). A hard link: no moment in which path names another file
    or a partial one. Where the file system has none, path is claimed as an empty file of ours
    (O_EXCL: never one that was there) and `made` moved onto it: the name shows an empty file
    for that moment, never another's file or a half-written clip."""
    try:
        os.link(made, path)
        return
    except OSError as e:
        if isinstance(e, FileExistsError) or e.errno not in _NO_HARD_LINKS:
            raise
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        os.replace(made, path)
    except BaseException:
        os.unlink(path)  # the empty placeholder is ours
        raise


def new_part_file(folder):
    """A new empty file ".clip-<random>.mp4.part" in folder, for a clip to be written into and
    then placed: made with the permissions the user's umask gives new files (mkstemp's 0600
    would leave the user's clips unreadable to anyone else)."""
    import secrets

    for _ in range(100):
        path = Path(folder) / f".clip-{secrets.token_hex(6)}.mp4.part"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{folder} holds 100 files named like .clip-*.mp4.part")


def _same_bytes(a, b):
    """True if b is a regular file (through links) with a's bytes."""
    if not os.path.isfile(b) or os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return all(x == y for x, y in zip(iter(lambda: fa.read(1 << 20), b""),
                                         iter(lambda: fb.read(1 << 20), b"")))
