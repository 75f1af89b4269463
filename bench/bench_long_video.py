"""How long sampling frames from a long video takes, against decoding all of it (the floor a
decoder that cannot seek would pay): a synthetic 3-minute 480p video, as Charades and
ActivityNet videos are, beside an MSR-VTT-like 15-second 320x240 one.

    python bench/bench_long_video.py              # 3 min at 854x480, 30 fps; 15 s at 320x240
    python bench/bench_long_video.py --gop 30     # keyframes every second instead of x264's 250
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


def write_moving_video(path, seconds, width, height, fps=30, gop=None):
    """H.264 video of a smooth gradient with a moving block: cheap to make, real motion."""
    import av

    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 255 // width), (y * 255 // height), np.full_like(x, 96)], -1)
    base = base.astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23", **({"g": str(gop)} if gop else {})}
        for i in range(int(seconds * fps)):
            image = base.copy()
            top, left = (i * 3) % (height - 60), (i * 5) % (width - 80)
            image[top:top + 60, left:left + 80] = (255 - i % 256, i % 256, 200)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def time_sampling(path, num_frames, repeats):
    """Best time of read_video (decord, one thread, as a DataLoader worker runs it)."""
    from data_loader import read_video
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        read_video(path, num_frames)
        best = min(best, time.perf_counter() - start)
    return best


def time_full_decode(path):
    """Every frame decoded and converted, in order, in batches: the no-seeking floor."""
    import decord
    start = time.perf_counter()
    reader = decord.VideoReader(str(path), num_threads=1)
    total = len(reader)
    for first in range(0, total, 256):
        reader.get_batch(list(range(first, min(total, first + 256))))
    return time.perf_counter() - start, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gop", type=int, default=None,
                        help="keyframe interval (default: x264's, 250)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="short, small videos: a smoke run")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "clip_hitchhiker_long_video"))
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    videos = {"3 min 854x480 (Charades/ActivityNet-like)": (180, 854, 480),
              "15 s 320x240 (MSR-VTT-like)": (15, 320, 240)}
    if args.quick:
        videos = {"6 s 160x96": (6, 160, 96), "2 s 96x64": (2, 96, 64)}
    print(f"decord, one thread; best of {args.repeats}; keyframe interval "
          f"{args.gop or 'x264 default (250)'}")
    for name, (seconds, width, height) in videos.items():
        path = work / f"{seconds}s_{width}x{height}_gop{args.gop or 'default'}.mp4"
        if not path.is_file():
            write_moving_video(path, seconds, width, height, gop=args.gop)
        full_s, total = time_full_decode(path)
        for num_frames in (32, 120):
            sample_s = time_sampling(path, num_frames, args.repeats)
            print(f"{name}: {num_frames:3d} of {total} frames in {sample_s:6.3f} s; decoding all "
                  f"{total} takes {full_s:6.3f} s ({sample_s / full_s:.2f}x of it)")


if __name__ == "__main__":
    main()
