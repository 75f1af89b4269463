"""How fast each decoder samples frames from long videos, per sampling mode, against the floor of
decoding every frame; and the decoders on MSR-VTT-like clips.

Long videos: synthetic 854x480 H.264 at 30 fps and a realistic bitrate (1 Mbit/s), with a key
frame every 2 s or 10 s, 10 minutes and 1 hour long (the hour is the 10 minutes six times over,
remuxed, so it costs no extra encoding). Content (--content):
    footage          two natural-statistics textures moving apart and cross-fading, through x264's
                     default preset (medium): every frame carries new detail, as in footage
    noise            a drifting uniform-noise texture through x264 ultrafast: the worst case for
                     key frames (incompressible) against the other frames (near free)
Each video's line gives the share of its bytes in key frames. Modes:
    num_frames 120   the evaluator's uniform rule (seeks between far-apart frames)
    fps 1            the frame nearest each second's midpoint (seeks when a key frame lies
                     between one chosen frame and the next; frames nothing refers to are skipped)
    keyframes        the key frame nearest each second's midpoint: only key frames decoded
    fps_no_seek      fps 1 by decoding every frame and converting the chosen ones: what the
                     skipping and seeking are measured against, with the same output to write
                     (on this sandbox, first touching output memory is slow)
The floor: PyAV decoding every frame on one thread, with no colour conversion (the least any
decoder that decodes every frame pays). Figures are seconds per hour of video, on one decoding
thread.

    python bench/bench_long_video.py                       # everything (long: hours of decoding)
    python bench/bench_long_video.py --lengths 600 --gops 2 10
    python bench/bench_long_video.py --lengths 3600 --gops 2 --decoders pyav --modes keyframes
    python bench/bench_long_video.py --content noise --lengths 600 --gops 2
    python bench/bench_long_video.py --quick                # a smoke run on tiny videos
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from bench.common import MSRVTT_MEAN_KBPS, encode_drifting_texture, make_videos  # noqa: E402
from clip_hitchhiker.embedding_cache import write_atomically  # noqa: E402

DECODERS = ("decord", "pyav", "torchcodec")
MODES = ("num_frames", "fps", "keyframes", "fps_no_seek")
FULL = {"size": (854, 480), "fps": 30, "kbps": 1000, "lengths": (600, 3600), "base": 600,
        "clips": 20, "clip_seconds": (10, 20)}
QUICK = {"size": (160, 96), "fps": 30, "kbps": 200, "lengths": (12, 24), "base": 12,
         "clips": 2, "clip_seconds": (2, 3)}


def natural_texture(height, width, seed):
    """uint8 [height, width, 3]: noise with a 1/f amplitude spectrum, the statistics of natural
    images (detail at every scale, neighbouring pixels alike), unlike uniform noise."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    amplitude = 1 / np.maximum(np.hypot(fy, fx), 1 / max(height, width))
    image = np.stack([np.fft.irfft2(amplitude * (rng.standard_normal(amplitude.shape) + 1j *
                                                 rng.standard_normal(amplitude.shape)),
                                    s=(height, width)) for _ in range(3)], axis=-1)
    image = (image - image.mean()) / image.std() * 50 + 128
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_footage(container, stream, num_frames, fps, seed=0):
    """Encode num_frames of two natural-texture layers that drift in different directions and
    cross-fade over 2.3 s, then flush the encoder. No single motion predicts a frame, so every
    frame carries new detail, as in footage: at 480p, 1 Mbit/s and 2 s key frame intervals, key
    frames carry about a fifth of the bytes (a drifting single texture gives them over half)."""
    import av

    height, width = stream.height, stream.width
    first = natural_texture(2 * height, 2 * width, seed).astype(np.float32)
    second = natural_texture(2 * height, 2 * width, seed + 1).astype(np.float32)
    for i in range(num_frames):
        y1, x1 = (i * 2) % height, (i * 3) % width
        y2, x2 = (height - 1) - i % height, (i * 2) % width
        alpha = 0.5 + 0.4 * np.sin(2 * np.pi * i / (2.3 * fps))
        image = (alpha * first[y1:y1 + height, x1:x1 + width] +
                 (1 - alpha) * second[y2:y2 + height, x2:x2 + width])
        frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), "rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_long_video(path, seconds, gop_seconds, size, fps, kbps, content, seed=0):
    """H.264 at kbps with 2 B-frames and a key frame every gop_seconds exactly; written beside
    path and moved into place. content "footage": encode_footage through x264's default preset
    (medium: CABAC, deblocking, as cameras and sites encode); "noise": a drifting uniform-noise
    texture through x264 ultrafast (CAVLC, no deblocking), the worst case for key frames: they
    hold incompressible noise while the other frames are near free."""
    import av

    width, height = size

    def write(tmp):
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.bit_rate = kbps * 1000
            gop = str(gop_seconds * fps)
            stream.options = {"preset": "medium" if content == "footage" else "ultrafast",
                              "g": gop, "keyint_min": gop, "sc_threshold": "0", "bf": "2"}
            if content == "footage":
                encode_footage(container, stream, int(seconds * fps), fps, seed)
            else:
                texture = np.random.default_rng(seed).integers(0, 256, (height * 2, width * 2, 3),
                                                               dtype=np.uint8)
                encode_drifting_texture(container, stream, texture, int(seconds * fps))

    write_atomically(path, write)


def key_frame_share(path):
    """The share of the video stream's bytes in key frames (demuxed, nothing decoded)."""
    import av

    total = key = 0
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            total += packet.size
            key += packet.size if packet.is_keyframe else 0
    return key / max(total, 1)


def repeat_video(source, path, copies):
    """source's video stream `copies` times over, one after the other (remuxed, not encoded)."""
    import av

    def write(tmp):
        with av.open(str(source)) as first:
            span = first.streams.video[0].duration
        with av.open(tmp, "w", format="mp4") as out:
            stream = None
            for copy in range(copies):
                with av.open(str(source)) as container:
                    video = container.streams.video[0]
                    if stream is None:
                        stream = out.add_stream_from_template(video)
                    for packet in container.demux(video):
                        if packet.dts is None:
                            continue
                        packet.pts += copy * span
                        packet.dts += copy * span
                        packet.stream = stream
                        out.mux(packet)

    write_atomically(path, write)


def long_video(work, seconds, gop_seconds, sizes, content):
    """The synthetic long video (made once, kept in work)."""
    width, height = sizes["size"]
    name = f"{content}_{width}x{height}_{sizes['kbps']}kbps_gop{gop_seconds}s"
    base = work / f"{name}_{sizes['base']}s.mp4"
    if not base.is_file():
        write_long_video(base, sizes["base"], gop_seconds, sizes["size"], sizes["fps"],
                         sizes["kbps"], content)
    if seconds == sizes["base"]:
        return base
    path = work / f"{name}_{seconds}s.mp4"
    if not path.is_file():
        repeat_video(base, path, seconds // sizes["base"])
    return path


def time_floor(path):
    """PyAV decoding every frame on one thread, no colour conversion. returns: (s, frames)."""
    import av

    start = time.perf_counter()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        count = sum(1 for _ in container.decode(stream))
    return time.perf_counter() - start, count


def time_no_seek(path):
    """fps 1 without seeking: PyAV decodes every frame, converts the chosen ones into the output.
    returns: (seconds, frames returned)."""
    import av

    from clip_hitchhiker.video.decoders import choose_frames, frame_table

    start = time.perf_counter()
    table = frame_table(path)
    wanted = set(table.pts[choose_frames(len(table.pts), table=table, fps=1.0)].tolist())
    images = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            if frame.pts in wanted:
                images.append(frame.to_ndarray(format="rgb24"))
    return time.perf_counter() - start, len(images)


def time_mode(path, decoder, mode):
    """One read_video call of the mode. returns: (seconds, frames returned)."""
    from data_loader import read_video

    if mode == "fps_no_seek":
        return time_no_seek(path)

    options = {"num_frames": {"num_frames": 120}, "fps": {"fps": 1.0},
               "keyframes": {"fps": 1.0, "keyframes": True}}[mode]
    start = time.perf_counter()
    frames, _ = read_video(path, decoder=decoder, **options)
    seconds = time.perf_counter() - start
    count = len(frames)
    del frames  # an hour at 1 fps is 4.4 GB of 480p frames: free it before the next call
    return seconds, count


def time_output_memory(count, height, width):
    """Writing count RGB frames into fresh memory, as every mode must return them: on some
    machines (this sandbox) first touching memory is slow, and a share of each mode's time."""
    start = time.perf_counter()
    import torch

    frames = torch.empty((count, height, width, 3), dtype=torch.uint8)  # as read_video's
    frames[:] = 1
    seconds = time.perf_counter() - start
    del frames
    return seconds


def bench_long(path, seconds, gop_seconds, decoders, modes, size, repeats=1):
    """Each decoder x mode against the floor, best of `repeats` rounds; each round times the
    floor and then every mode, so that a change in the machine's load reaches both."""
    runs = [(decoder, mode) for decoder in decoders for mode in modes
            if mode != "fps_no_seek" or decoder == "pyav"]
    floors, best, counts = [], {}, {}
    for _ in range(repeats):
        floor, total = time_floor(path)
        floors.append(floor)
        for run in runs:
            taken, counts[run] = time_mode(path, *run)
            best[run] = min(best.get(run, taken), taken)
    floor = min(floors)
    per_hour = 3600 / seconds
    spread = (f" (best of {repeats}: {min(floors) * per_hour:.1f} to "
              f"{max(floors) * per_hour:.1f})" if repeats > 1 else "")
    print(f"{seconds / 60:g} min, key frame every {gop_seconds} s ({total} frames, "
          f"{key_frame_share(path):.0%} of the bytes in key frames): floor (PyAV, every frame, "
          f"no conversion) {floor * per_hour:7.1f} s per video-hour{spread}")
    for count in sorted({120, int(seconds), int(seconds) // gop_seconds}):
        memory = time_output_memory(count, size[1], size[0])
        print(f"{seconds / 60:g} min: writing {count} frames into fresh memory (part of every "
              f"mode returning them) {memory * per_hour:7.1f} s per video-hour "
              f"({memory / floor:.3f}x the floor)")
    for decoder, mode in runs:
        taken = best[(decoder, mode)]
        print(f"{seconds / 60:g} min, key frame every {gop_seconds} s: {decoder:10s} "
              f"{mode:10s} {counts[(decoder, mode)]:5d} frames {taken * per_hour:7.1f} s per "
              f"video-hour ({taken / floor:.3f}x the floor, {floor / taken:5.1f}x faster)")


def bench_clips(csv, decoders, repeats):
    """read_video(path, 16) over MSR-VTT-like clips, best of repeats, against decord."""
    import pandas as pd

    from data_loader import read_video

    paths = [csv.parent / name for name in pd.read_csv(csv)["video_path"]]
    best = {}
    for decoder in decoders:
        best[decoder] = min(_time_all(read_video, paths, decoder) for _ in range(repeats))
    reference = best.get("decord")
    for decoder, seconds in best.items():
        ratio = f" ({seconds / reference:.2f}x decord)" if reference else ""
        print(f"320x240 clips: {decoder:10s} num_frames 16: {seconds / len(paths) * 1e3:7.1f} "
              f"ms per clip{ratio}  ({len(paths)} clips, best of {repeats})")


def _time_all(read_video, paths, decoder):
    start = time.perf_counter()
    for path in paths:
        read_video(path, 16, decoder=decoder)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="video lengths in seconds, multiples of 600 (default 600 3600)")
    parser.add_argument("--gops", type=int, nargs="+", default=[2, 10],
                        help="key frame intervals in seconds (default 2 10)")
    parser.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--content", nargs="+", default=["footage"], choices=("footage", "noise"),
                        help="footage (default): two natural textures moving apart, x264 "
                             "medium; noise: a drifting noise texture, x264 ultrafast (the worst "
                             "case for key frames)")
    parser.add_argument("--no_clips", action="store_true", help="skip the 320x240 clips")
    parser.add_argument("--repeats", type=int, default=3, help="clip timings: best of (3)")
    parser.add_argument("--long_repeats", type=int, default=1,
                        help="long videos: best of N rounds of the floor and every mode (1)")
    parser.add_argument("--quick", action="store_true", help="tiny videos: a smoke run")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "clip_hitchhiker_long_video"))
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    lengths = args.lengths or sizes["lengths"]
    if any(length % sizes["base"] for length in lengths):
        parser.error(f"--lengths must be multiples of {sizes['base']}")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"{sizes['size'][0]}x{sizes['size'][1]} H.264, {sizes['fps']} fps, {sizes['kbps']} "
          f"kbit/s; one decoding thread; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"on {os.cpu_count()} CPUs")
    for content in args.content:
        print(f"content: {content}")
        for seconds in lengths:
            for gop in args.gops:
                bench_long(long_video(work, seconds, gop, sizes, content), seconds, gop,
                           args.decoders, args.modes, sizes["size"], args.long_repeats)
    if not args.no_clips:
        csv = make_videos(work / "clips", sizes["clips"], sizes["clip_seconds"],
                          kbps=MSRVTT_MEAN_KBPS)
        bench_clips(csv, args.decoders, args.repeats)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
