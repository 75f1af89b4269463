"""What the benchmarks share: MSR-VTT-like synthetic videos and CLIP models with random weights
(no download needed)."""
import multiprocessing
import os
from pathlib import Path

import numpy as np
import torch

# clip.model.CLIP arguments; clip's build_model infers heads as width // 64.
CLIP_SHAPES = {
    "tiny": dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64,
                 vision_patch_size=16, context_length=77, vocab_size=49408,
                 transformer_width=64, transformer_heads=1, transformer_layers=1),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, context_length=77, vocab_size=49408,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
}


def random_clip(shape="ViT-B/16", seed=0):
    """A clip.model.CLIP of the named shape with seeded random weights, in eval mode."""
    from clip.model import CLIP

    torch.manual_seed(seed)
    return CLIP(**CLIP_SHAPES[shape]).eval()


def random_clip_checkpoint(path, shape="ViT-B/16"):
    """random_clip(shape) saved as a state dict that load_clip_model reads. returns: path."""
    if not Path(path).is_file():
        torch.save(random_clip(shape).state_dict(), path)
    return path


def write_textured_video(path, seconds, width=320, height=240, fps=30, seed=0):
    """H.264 video of a drifting random texture: decodes like real footage, unlike flat colour."""
    import av

    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(int(seconds * fps)):
            dy, dx = (i * 2) % height, (i * 3) % width
            frame = av.VideoFrame.from_ndarray(texture[dy:dy + height, dx:dx + width], "rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_one(job):
    path, seconds, seed = job
    if not Path(path).is_file():
        write_textured_video(path, seconds, seed=seed)


def make_videos(folder, count, seconds=(10, 20)):
    """count 320x240 30 fps videos of seconds[0]..seconds[1] s in folder (written in parallel,
    kept between runs), and a captions CSV. returns: the CSV path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    low, high = seconds
    jobs = [(str(folder / f"video{i:04d}.mp4"), low + (i * 7) % (high - low + 1), i)
            for i in range(count)]
    with multiprocessing.Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_write_one, jobs)
    csv = folder / "captions.csv"
    csv.write_text("video_path,caption\n" + "".join(f"video{i:04d}.mp4,a synthetic clip number "
                                                    f"{i}\n" for i in range(count)))
    return csv
