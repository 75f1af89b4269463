"""What the benchmarks share: MSR-VTT-like synthetic videos and CLIP models with random weights
(no download needed)."""
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clip_hitchhiker.embedding_cache import write_atomically
from clip_hitchhiker.synthetic_data import random_clip

def random_clip_checkpoint(path, shape="ViT-B/16"):
    """random_clip(shape) saved as a state dict that load_clip_model reads. returns: path."""
    path = Path(path)
    if not path.is_file():
        state = random_clip(shape).state_dict()
        write_atomically(path, lambda tmp: torch.save(state, tmp))
    return path


# MSR-VTT's mean bitrate: about 6 GB of videos over 41.2 hours (Xu et al. 2016), audio included,
# so its video streams average at most this. Decoding cost grows with the bitrate.
MSRVTT_MEAN_KBPS = 320


def encode_drifting_texture(container, stream, texture, num_frames):
    """Encode num_frames views of texture ([2H, 2W, 3] uint8) through a stream.height x
    stream.width window that drifts 2 px down and 3 px right a frame, then flush the encoder:
    motion that decodes like footage, unlike flat colour."""
    import av

    height, width = stream.height, stream.width
    for i in range(num_frames):
        dy, dx = (i * 2) % height, (i * 3) % width
        frame = av.VideoFrame.from_ndarray(texture[dy:dy + height, dx:dx + width], "rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_textured_video(path, seconds, width=320, height=240, fps=30, seed=0, kbps=None):
    """H.264 video of a drifting random texture: decodes like real footage, unlike flat colour.
    kbps: the average bitrate; None encodes at constant quality (crf 23), which gives this
    texture about 1.1 Mbit/s at 320x240, 3.5x MSR-VTT's mean. Written beside `path` and moved
    into place, so an interrupted run never leaves a half-written video that a later run reuses.
    """
    import av

    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)

    def write(tmp):
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "veryfast", **({"crf": "23"} if kbps is None else {})}
            if kbps is not None:
                stream.bit_rate = int(kbps * 1000)
            encode_drifting_texture(container, stream, texture, int(seconds * fps))

    write_atomically(path, write)


def _write_one(job):
    path, seconds, seed, kbps = job
    if not Path(path).is_file():
        write_textured_video(path, seconds, seed=seed, kbps=kbps)


def make_videos(folder, count, seconds=(10, 20), kbps=MSRVTT_MEAN_KBPS):
    """count 320x240 30 fps videos of seconds[0]..seconds[1] s at `kbps` (None: crf 23) in
    folder/<bitrate>/, written in parallel and kept between runs, and a captions CSV.
    returns: the CSV path (its folder is the video root)."""
    folder = Path(folder) / ("crf23" if kbps is None else f"{kbps}kbps")
    folder.mkdir(parents=True, exist_ok=True)
    low, high = seconds
    jobs = [(str(folder / f"video{i:04d}.mp4"), low + (i * 7) % (high - low + 1), i, kbps)
            for i in range(count)]
    with multiprocessing.Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_write_one, jobs)
    # One CSV per count: runs of other sizes share the videos.
    csv = folder / f"captions_{count}.csv"
    csv.write_text("video_path,caption\n" + "".join(f"video{i:04d}.mp4,a synthetic clip number "
                                                    f"{i}\n" for i in range(count)))
    return csv


def mean_kbps(csv, fps=30):
    """The average bitrate in kbit/s of the videos a make_videos CSV lists: file bytes over
    duration (frame count / fps)."""
    import decord

    paths = [Path(csv).parent / name for name in pd.read_csv(csv)["video_path"]]
    total_bytes = sum(os.path.getsize(p) for p in paths)
    total_seconds = sum(len(decord.VideoReader(str(p), num_threads=1)) / fps for p in paths)
    return total_bytes * 8 / total_seconds / 1000
