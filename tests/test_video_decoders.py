"""The decoders behind read_video: the same frames from decord, PyAV and torchcodec (pixels that
encode the frame index), the time-based rules against hand-worked timestamps, auto's fallback,
and the errors for an unknown decoder and a missing FFmpeg library."""
import ctypes.util
import fractions
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data_loader
from clip_hitchhiker.video import decoders as video_decoders
from clip_hitchhiker.errors import ConfigError, VideoDecodeError
from data_loader import read_video, read_video_times, sample_frame_indices
from tests.synthetic import decode_frame_indices, frame_colour
from tests.system_libraries import needs_ffmpeg, torchcodec_param

REPO = Path(__file__).resolve().parent.parent

# torchcodec's cases skip where FFmpeg's shared libraries are missing (tests/system_libraries.py).
DECODERS = ("decord", "pyav", torchcodec_param("torchcodec"))


def write_video(path, num_frames, codec="libx264", options=None, width=64, height=48, fps=10,
                times=None, key_frames=()):
    """Frame i has colour frame_colour(i). times: presentation times in seconds (a variable
    frame rate), else i / fps; key_frames: frames forced to be key frames."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "10", **(options or {})} if codec == "libx264" else \
            (options or {})
        if times is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i in range(num_frames):
            image = np.empty((height, width, 3), np.uint8)
            image[...] = frame_colour(i)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), fractions.Fraction(1, 1000)
            if i in key_frames:
                frame.pict_type = av.video.frame.PictureType.I
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_all_and_pick(path, indices):
    """The oracle: PyAV decodes every frame in order; uint8 [S, 3, H, W] at the indices."""
    import av

    with av.open(str(path)) as container:
        frames = sorted(((f.pts, f.to_ndarray(format="rgb24")) for f in
                         container.decode(container.streams.video[0])), key=lambda p: p[0])
    return torch.from_numpy(np.stack([frames[i][1] for i in indices])).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def bframes_video(tmp_path_factory):
    """H.264 with B-frames, 37 frames at 10 fps, a key frame every 8 frames."""
    path = tmp_path_factory.mktemp("videos") / "bframes.mp4"
    return write_video(path, 37, options={"bf": "3", "preset": "medium", "g": "8"})


# ----------------------------------------------------------------------------------------------
# The same frames


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("num_frames", [1, 8, 37, 50])
def test_num_frames_gives_the_releases_indices_with_every_decoder(bframes_video, decoder,
                                                                  num_frames):
    frames, info = read_video(bframes_video, num_frames, decoder=decoder)
    expected = sample_frame_indices(37, num_frames)  # 50 > 37 frames: indices repeat
    assert info["decoder"] == decoder and info["frames"] == 37
    assert info["indices"] == expected
    assert decode_frame_indices(frames) == expected
    assert tuple(frames.shape) == (num_frames, 3, 48, 64) and frames.dtype == torch.uint8


@pytest.mark.parametrize("decoder", DECODERS[1:])
def test_decoders_give_identical_pixels(bframes_video, decoder):
    reference, _ = read_video(bframes_video, 8, decoder="decord")
    assert torch.equal(read_video(bframes_video, 8, decoder=decoder)[0], reference)


def in_fresh_process(function, *args):
    """Call this module's function(*args) in a new Python process. For libvpx-vp9's encoder:
    in CI's long test process (hundreds of tests in), avcodec_open2("libvpx-vp9") failed with
    EINVAL in both tests that encode VP9, and never when they ran alone; a new process carries
    none of the earlier tests' state. args: values whose repr() reads back (str, int, dict)."""
    code = f"from tests.test_video_decoders import {function.__name__} as f; f(*{args!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def write_webm_with_long_audio(path):
    """37 frames of VP9 at 10 fps (frame i coloured frame_colour(i)), 5 s of silent Opus."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("libvpx-vp9", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = container.add_stream("libopus", rate=48000)
        for i in range(37):
            image = np.empty((48, 64, 3), np.uint8)
            image[...] = frame_colour(i)
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        for start in range(0, 5 * 48000, 960):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt",
                                                 layout="mono")
            samples.sample_rate, samples.pts = 48000, start
            for packet in audio.encode(samples):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def long_audio_webm(tmp_path_factory):
    """A VP9 WebM of 37 frames at 10 fps with 5 s of Opus audio (write_webm_with_long_audio)."""
    path = tmp_path_factory.mktemp("webm") / "long_audio.webm"
    in_fresh_process(write_webm_with_long_audio, str(path))
    return path


@pytest.mark.parametrize("decoder", DECODERS)
def test_frame_count_is_the_streams_not_the_containers(long_audio_webm, decoder):
    """A WebM has no frame count in its header; an audio track longer than the video makes
    the container 5 s long. Every decoder counts the video's 37 frames (its packets)."""
    import av

    path = long_audio_webm
    with av.open(str(path)) as container:  # what the headers say
        assert container.streams.video[0].frames == 0 and container.duration > 4_900_000
    frames, info = read_video(path, 4, decoder=decoder)
    assert info["frames"] == 37 and decode_frame_indices(frames) == [4, 13, 22, 32]
    frames, info = read_video_times(path, fps=1, decoder=decoder)
    assert info["duration"] == pytest.approx(3.7)
    assert decode_frame_indices(frames) == info["indices"] == [5, 15, 25, 33]


@pytest.mark.parametrize("decoder", DECODERS[1:])
@pytest.mark.parametrize("width,height", [(48, 96), (16, 16)])
def test_sizes_decord_fails_on_decode_through_the_others(tmp_path, width, height, decoder):
    path = write_video(tmp_path / "small.mp4", 23, width=width, height=height)
    with pytest.raises(VideoDecodeError, match=r"small\.mp4 with decord: .*try --decoder pyav"):
        read_video(path, 4, decoder="decord")
    frames, info = read_video(path, 4, decoder=decoder)
    assert decode_frame_indices(frames) == sample_frame_indices(23, 4)
    assert tuple(frames.shape[2:]) == (height, width)
    frames, info = read_video(path, 4, decoder="auto")
    assert info["decoder"] == "pyav" and info["fallback"].startswith("decord failed: ")
    assert decode_frame_indices(frames) == sample_frame_indices(23, 4)


def test_mpeg4_avi_with_b_frames_equals_decoding_everything(tmp_path):
    """AVI indexes decode order, so seeking to a B-frame video's key frame lands elsewhere:
    PyAV notices and decodes from the start, giving exactly the frames of decoding everything
    and picking (decord gives other frames here: docs/decoders.md)."""
    path = write_video(tmp_path / "mpeg4.avi", 37, codec="mpeg4",
                       options={"qscale": "2", "bf": "2"})
    for kwargs in ({"num_frames": 8}, {"fps": 2.0}):
        frames, info = read_video(path, decoder="pyav", **kwargs)
        assert torch.equal(frames, decode_all_and_pick(path, info["indices"]))


# ----------------------------------------------------------------------------------------------
# Sampling by time


@pytest.mark.parametrize("decoder", DECODERS)
def test_fps_takes_the_frames_nearest_the_segment_midpoints(bframes_video, decoder):
    # 37 frames at 10 fps: 3.7 s. Segments [0, 1), [1, 2), [2, 3), [3, 3.7): midpoints 0.5, 1.5,
    # 2.5 s are frames 5, 15, 25; 3.35 s lies halfway between frames 33 and 34: the earlier.
    frames, info = read_video_times(bframes_video, fps=1, decoder=decoder)
    assert info["indices"] == [5, 15, 25, 33] and decode_frame_indices(frames) == [5, 15, 25, 33]
    assert info["times"] == pytest.approx([0.5, 1.5, 2.5, 3.3])
    assert info["duration"] == pytest.approx(3.7) and info["decoder"] == decoder
    # max_frames 2: segments [0, 1.85), [1.85, 3.7): midpoints 0.925 and 2.775 s.
    frames, info = read_video_times(bframes_video, fps=1, max_frames=2, decoder=decoder)
    assert decode_frame_indices(frames) == info["indices"] == [9, 28]
    # Above the frame rate, each frame once: 40 segments of 0.0925 s over 37 frames.
    frames, info = read_video_times(bframes_video, fps=20, max_frames=40, decoder=decoder)
    assert info["indices"] == decode_frame_indices(frames) == list(range(37))


@pytest.mark.parametrize("decoder", DECODERS)
def test_fps_equals_decoding_everything_and_picking(tmp_path, decoder):
    # 100 frames at 10 fps, B-frames, a key frame every 10. At 0.2 fps: segments [0, 5), [5, 10)
    # s, midpoints 2.5 s and 7.5 s: frames 25 and 75. PyAV seeks to key frame 20, then from
    # frame 26 past 44 frames to key frame 70 (more than SEEK_COST_FRAMES).
    path = write_video(tmp_path / "v.mp4", 100, options={"bf": "3", "preset": "medium",
                                                          "g": "10", "sc_threshold": "0"})
    frames, info = read_video_times(path, fps=0.2, decoder=decoder)
    assert info["indices"] == [25, 75]
    assert torch.equal(frames, decode_all_and_pick(path, [25, 75]))


def write_moving_texture(path, num_frames, codec, options, fps=10, width=96, height=64):
    """A noise texture drifting 2 px down and 3 px right a frame: frames that decode from their
    references (a skipped reference would show in the pixels), unlike flat colours."""
    import av

    from bench.common import encode_drifting_texture

    texture = np.random.default_rng(3).integers(0, 256, (2 * height, 2 * width, 3), np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = options
        encode_drifting_texture(container, stream, texture, num_frames)
    return path


def picture_types(path):
    """Every frame's picture type ("I", "P", "B"), in presentation order (PyAV, all decoded)."""
    import av

    with av.open(str(path)) as container:
        frames = sorted((f.pts, av.video.frame.PictureType(f.pict_type).name) for f in
                        container.decode(container.streams.video[0]))
    return [kind for _, kind in frames]


def decode_at(path, wanted):
    """video_decoders._decode_at as _read_pyav calls it. returns: (uint8 [S, 3, H, W], frames
    the decoder output)."""
    import av

    def open_stream():
        container = av.open(str(path))
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        return container, stream

    images, _, decoded = video_decoders._decode_at(open_stream, video_decoders.frame_table(path),
                                                    wanted)
    return torch.from_numpy(images).permute(0, 3, 1, 2), decoded


def test_frames_nothing_refers_to_are_skipped_and_the_rest_are_exact(tmp_path):
    # x264 with a fixed pattern and no B-pyramid: every B-frame is a non-reference picture.
    # Each 30-frame GOP is I, (B B P) x 9, B P: 19 B-frames. Frames 2, 7, ..., 57 are wanted
    # (5 apart, far under SEEK_COST_FRAMES: no seek); 8 of them are B-frames.
    path = write_moving_texture(tmp_path / "b.mp4", 60, "libx264", {
        "crf": "18", "x264-params": "bframes=2:b-adapt=0:b-pyramid=none:keyint=30:"
                                    "min-keyint=30:scenecut=0"})
    kinds = picture_types(path)
    assert "".join(kind[0] for kind in kinds[:30]) == "I" + "BBP" * 9 + "BP"
    wanted = list(range(2, 60, 5))
    b_frames = {i for i, kind in enumerate(kinds) if kind == "B"}
    assert len(b_frames) == 38 and sorted(b_frames & set(wanted)) == [2, 7, 17, 22, 32, 37, 47,
                                                                      52]
    frames, decoded = decode_at(path, wanted)
    assert torch.equal(frames, decode_all_and_pick(path, wanted))
    # Reading stops at frame 57 (a P-frame): frames 0-57 hold 37 B-frames, 29 of them unwanted
    # and never decoded, so the decoder output 58 - 29 frames.
    assert decoded == 29


@pytest.mark.parametrize("codec, options", [
    ("libx264", {"bf": "3", "b-pyramid": "normal", "g": "24", "sc_threshold": "0"}),
    ("libx265", {"x265-params": "bframes=3:b-pyramid=1:keyint=24:min-keyint=24:log-level=none"}),
    ("mpeg4", {"qscale": "3", "bf": "2", "g": "24"}),
    ("libvpx-vp9", {"g": "24", "auto-alt-ref": "1", "lag-in-frames": "16", "crf": "30",
                    "b:v": "0"}),
], ids=["h264-b-pyramid", "hevc", "mpeg4", "vp9-alt-ref"])
def test_skipping_unreferenced_frames_is_exact_per_codec(tmp_path, codec, options):
    suffix = ".webm" if "vpx" in codec else ".mp4"
    path = tmp_path / f"v{suffix}"
    if "vpx" in codec:  # see in_fresh_process
        in_fresh_process(write_moving_texture, str(path), 72, codec, options)
    else:
        write_moving_texture(path, 72, codec, options)
    for wanted in (list(range(1, 72, 4)), list(range(3, 72, 7)), [0, 71]):
        frames, decoded = decode_at(path, wanted)
        assert torch.equal(frames, decode_all_and_pick(path, wanted)), (codec, wanted)


@pytest.fixture(scope="module")
def variable_rate_video(tmp_path_factory):
    """Nine frames at uneven times; frames 0 and 4 are the only key frames."""
    times = [0.0, 0.1, 0.2, 0.3, 1.0, 1.05, 1.1, 2.5, 2.9]
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    return write_video(path, len(times), options={"g": "1000", "sc_threshold": "0",
                                                  "forced-idr": "1", "bf": "0"},
                       times=times, key_frames=(0, 4)), times


@pytest.mark.parametrize("decoder", DECODERS)
def test_variable_frame_rate_by_time(variable_rate_video, decoder):
    path, times = variable_rate_video
    frames, info = read_video_times(path, fps=1, decoder=decoder)
    # Midpoints 0.5 s: 0.3 (0.2 away) beats 1.0; 1.5 s: 1.1 (0.4) beats 2.5; the last segment
    # ends after 2.9 s, so its midpoint lies nearest 2.5.
    assert info["indices"] == decode_frame_indices(frames) == [3, 6, 7]
    assert info["times"] == pytest.approx([0.3, 1.1, 2.5])
    # Key frames only: 0.5 s is as near 0.0 as 1.0 (the earlier wins); 1.5 and 2.5 s -> 1.0 s.
    frames, info = read_video_times(path, fps=1, keyframes=True, decoder=decoder)
    assert info["indices"] == decode_frame_indices(frames) == [0, 4]
    assert info["times"] == pytest.approx([0.0, 1.0])


@pytest.mark.parametrize("decoder", DECODERS)
def test_keyframes_decodes_only_key_frames(bframes_video, decoder):
    # Key frames every 8 frames: 0, 8, 16, 24, 32 (0.0, 0.8, ... 3.2 s).
    table = video_decoders.frame_table(bframes_video)
    assert np.flatnonzero(table.key).tolist() == [0, 8, 16, 24, 32]
    frames, info = read_video_times(bframes_video, fps=1, keyframes=True, decoder=decoder)
    # Midpoints 0.5, 1.5, 2.5, 3.35 s -> key frames at 0.8, 1.6, 2.4, 3.2 s.
    assert info["indices"] == decode_frame_indices(frames) == [8, 16, 24, 32]
    assert info["times"] == pytest.approx([0.8, 1.6, 2.4, 3.2])


def key_frames_in_one_pass(path, fps):
    """video_decoders._key_frames_in_one_pass as _read_pyav calls it. returns: (FrameTable,
    sorted times of the key frames it decoded)."""
    import av

    def open_stream():
        container = av.open(str(path))
        container.streams.video[0].codec_context.skip_frame = "NONKEY"
        return container, container.streams.video[0]

    table, decoded = video_decoders._key_frames_in_one_pass(
        open_stream, {"fps": fps, "keyframes": True}, str(path))
    return table, sorted(time for _, time in decoded.values())


def test_keyframes_reads_the_table_and_decodes_the_chosen_key_frames_in_one_pass(bframes_video):
    # Declared duration 3.7 s (the container's), key frames at 0, 0.8, ..., 3.2 s. fps 1:
    # midpoints 0.5, 1.5, 2.5, 3.35 s choose 0.8, 1.6, 2.4, 3.2 s; key frame 0 is not decoded.
    table, decoded = key_frames_in_one_pass(bframes_video, 1.0)
    assert decoded == pytest.approx([0.8, 1.6, 2.4, 3.2])
    alone = video_decoders.frame_table(bframes_video)
    assert np.array_equal(table.pts, alone.pts) and np.array_equal(table.key, alone.key)
    assert (table.time_base, table.start, table.end) == (alone.time_base, alone.start, alone.end)
    # fps 0.5: segments [0, 2) and [2, 3.7) s, midpoints 1.0 (nearest 0.8) and 2.85 (nearest
    # 3.2, 0.35 s away against 2.4's 0.45).
    assert key_frames_in_one_pass(bframes_video, 0.5)[1] == pytest.approx([0.8, 3.2])


@pytest.mark.parametrize("declared", ["wrong", "absent"])
def test_keyframes_with_a_wrong_or_absent_declared_duration_gives_the_same_frames(
        bframes_video, monkeypatch, declared):
    expected, expected_info = read_video_times(bframes_video, fps=0.5, keyframes=True,
                                               decoder="pyav")
    # Wrong: every target at 0 s, so only key frame 0 is decoded in the pass and the chosen
    # ones (0.8 and 3.2 s) by seeking after it. Absent: every key frame is decoded.
    fake = {"wrong": lambda container, stream, request: np.zeros(1),
            "absent": lambda container, stream, request: None}[declared]
    monkeypatch.setattr(video_decoders, "_declared_targets", fake)
    decoded = key_frames_in_one_pass(bframes_video, 0.5)[1]
    assert decoded == pytest.approx({"wrong": [0.0], "absent": [0.0, 0.8, 1.6, 2.4, 3.2]}[
        declared])
    frames, info = read_video_times(bframes_video, fps=0.5, keyframes=True, decoder="pyav")
    assert info["indices"] == expected_info["indices"] == [8, 32]
    assert info["times"] == pytest.approx([0.8, 3.2])
    assert torch.equal(frames, expected)
    assert torch.equal(frames, decode_all_and_pick(bframes_video, [8, 32]))


def test_choose_frames_by_hand():
    table = video_decoders.FrameTable(pts=np.array([0, 10, 20, 30, 40, 90]),
                                      key=np.array([1, 0, 0, 1, 0, 0], bool), time_base=0.01,
                                      start=0.0, end=1.0)
    # Midpoints 0.25 and 0.75 s: frames at 0.2 s (index 2) and 0.9 s (index 5).
    assert video_decoders.choose_frames(6, table=table, fps=2) == [2, 5]
    # Key frames 0.0 and 0.3 s: 0.25 -> 0.3 s, 0.75 -> 0.3 s, once.
    assert video_decoders.choose_frames(6, table=table, fps=2, keyframes=True) == [3]
    assert video_decoders.choose_frames(6, sample_frame_indices, 3) == [1, 3, 5]


# ----------------------------------------------------------------------------------------------
# Choosing the decoder, and its errors


def test_auto_falls_back_to_pyav_when_decord_does_not_import(bframes_video, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord now raises ImportError
    video_decoders.decord_imports.cache_clear()
    try:
        assert video_decoders.resolve_decoder("auto") == "pyav"
        assert video_decoders.decoder_line("auto") == \
            "decoder: pyav (auto: decord does not import here)"
        frames, info = read_video(bframes_video, 4, decoder="auto")
        assert info["decoder"] == "pyav" and "fallback" not in info
        assert decode_frame_indices(frames) == sample_frame_indices(37, 4)
        with pytest.raises(ConfigError, match="--decoder decord: decord does not import here"):
            video_decoders.check_decoder("decord")
    finally:
        monkeypatch.undo()
        video_decoders.decord_imports.cache_clear()
    assert video_decoders.resolve_decoder("auto") == "decord"


def test_unknown_decoder_is_one_clear_error(bframes_video):
    with pytest.raises(ConfigError, match=r"--decoder must be one of decord, pyav, torchcodec, "
                                          r"auto, got 'ffmpeg'"):
        read_video(bframes_video, 4, decoder="ffmpeg")
    from run_msr_retrieval import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--decoder", "ffmpeg"])


def test_missing_ffmpeg_library_is_named(bframes_video, monkeypatch):
    # As on a machine with every FFmpeg library but libavdevice (whatever this one has):
    # torchcodec's load fails, and the lookup names it.
    from torchcodec._core import ops

    def fail_to_load():
        raise RuntimeError("Could not load libtorchcodec. Likely causes: FFmpeg is not installed")
    monkeypatch.setattr(ops, "load_core_libraries", fail_to_load)
    monkeypatch.setattr(ctypes.util, "find_library",
                        lambda name: None if name == "avdevice" else f"lib{name}.so")
    message = (r"FFmpeg's shared library libavdevice is not installed.*apt-get install.*"
               r"--decoder pyav")
    with pytest.raises(ConfigError, match=message):
        video_decoders.check_decoder("torchcodec")
    with pytest.raises(ConfigError, match=message):
        read_video(bframes_video, 4, decoder="torchcodec")


@needs_ffmpeg
def test_torchcodec_loads_when_the_lookup_misses_its_ffmpeg(bframes_video, monkeypatch):
    # FFmpeg on LD_LIBRARY_PATH only: find_library misses it, but the load is what counts.
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    video_decoders.check_decoder("torchcodec")
    frames, info = read_video(bframes_video, 4, decoder="torchcodec")
    assert info["decoder"] == "torchcodec" and frames.shape[0] == 4


def test_unloadable_ffmpeg_with_every_library_present_says_so(monkeypatch):
    from torchcodec._core import ops

    def fail_to_load():
        raise OSError("libavcodec.so.62: version `LIBAVCODEC_62' not found\nmore detail")
    monkeypatch.setattr(ops, "load_core_libraries", fail_to_load)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: f"lib{name}.so")
    with pytest.raises(ConfigError, match=r"torchcodec cannot load FFmpeg \(libavcodec.so.62: "
                                          r"version `LIBAVCODEC_62' not found\); .*--decoder pyav"):
        video_decoders.check_decoder("torchcodec")


def test_decode_on_device_needs_torchcodec_and_cuda(capsys):
    from run_msr_retrieval import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--decoder", "pyav", "--decode_on", "device"])
    assert "--decode_on device decodes with --decoder torchcodec" in capsys.readouterr().err
    from clip_hitchhiker.models.options import decode_device, loader_workers
    with pytest.raises(ConfigError, match="--decode_on device decodes on CUDA"):
        decode_device("device", torch.device("cpu"))
    assert decode_device("cpu", torch.device("cpu")) == "cpu"
    assert loader_workers(4, "device") == 0 and loader_workers(4, "cpu") == 4


def test_read_video_needs_one_way_of_sampling(bframes_video):
    with pytest.raises(ValueError, match="give num_frames or fps"):
        read_video(bframes_video)
    with pytest.raises(ValueError, match="give num_frames or fps"):
        read_video(bframes_video, 4, fps=1.0)
    with pytest.raises(ValueError, match="keyframes=True samples by time"):
        read_video(bframes_video, 4, keyframes=True)


def test_dataset_items_use_the_chosen_decoder(tmp_path, clip_preprocess):
    write_video(tmp_path / "a.mp4", 12)
    (tmp_path / "c.csv").write_text("video_path,caption\na.mp4,a clip\n")
    dataset = data_loader.CSVDataset(tmp_path / "c.csv", tmp_path, None, 4)
    dataset.set_decoder("pyav")
    item = dataset[0]
    assert item["decoded"]["decoder"] == "pyav"
    assert decode_frame_indices(item["video"]) == sample_frame_indices(12, 4)
    with pytest.raises(ConfigError):
        dataset.set_decoder("opencv")


# ----------------------------------------------------------------------------------------------
# The evaluator


def test_evaluator_auto_falls_back_per_video_and_records_it(tmp_path, tiny_clip_files, capsys):
    """A 16x16 video, which decord cannot read: auto reads it with PyAV and says so in the
    manifest and the report; an explicit decord stops with a line that suggests pyav."""
    import json

    import run_msr_retrieval
    from tests import synthetic

    write_video(tmp_path / "big.mp4", 12)
    write_video(tmp_path / "tiny.mp4", 12, width=16, height=16)
    (tmp_path / "c.csv").write_text("video_path,caption\nbig.mp4,a big clip\n"
                                    "tiny.mp4,a tiny clip\n")

    def run(*extra):
        argv = synthetic.cli_argv(tmp_path, tmp_path, tiny_clip_files["torchscript"], "--csv",
                                  tmp_path / "c.csv", "--video_root", tmp_path, *extra)
        return run_msr_retrieval.main(run_msr_retrieval.parse_args(argv))

    report = run("--decoder", "auto", "--output_json", tmp_path / "r.json")
    assert capsys.readouterr().err.splitlines()[0] == \
        "decoder: decord (auto: decord imports; PyAV reads any video decord cannot)"
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["decoder"] == report["decoder"] == {
        "requested": "auto", "chosen": "decord", "decode_on": "cpu",
        "fallback_videos": ["tiny.mp4"]}
    videos = written["manifest"]["videos"]
    assert videos["big.mp4"]["decoder"] == "decord" and "fallback" not in videos["big.mp4"]
    assert videos["tiny.mp4"]["decoder"] == "pyav"
    assert "with decord" in videos["tiny.mp4"]["fallback"]
    assert videos["tiny.mp4"]["indices"] == sample_frame_indices(12, 4)
    with pytest.raises(VideoDecodeError, match=r"1 video\(s\) failed to decode, e.g. tiny.mp4: "
                                               r".*with decord: .*try --decoder pyav"):
        run("--decoder", "decord", "--no_cache")
    # Another decoder is another cache entry: pyav decodes again (no cache hit).
    report = run("--decoder", "pyav")
    assert report["cache"]["hit"] is False and report["counts"]["decoded_videos"] == 2
    assert run("--decoder", "pyav")["cache"]["hit"] is True
