"""Synthetic data that needs no download: CLIP models with seeded random weights, and colour
videos whose caption names the colour of a few frames among noise. The tests, the benchmarks and
the demo (`python -m clip_hitchhiker.demo`) build on it; it ships with the package so that the
demo runs from an installed copy."""
from pathlib import Path

import numpy as np
import torch

__all__ = ["CLIP_SHAPES", "LEARNING_COLOURS", "build_colour_videos", "random_clip",
           "save_tiny_clip", "tiny_clip", "write_colour_video", "write_noise_video"]

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


def tiny_clip(seed=0):
    """A small clip.model.CLIP (embedding width 32, 32 px images), seeded."""
    return random_clip("tiny", seed)


def save_tiny_clip(path, kind="torchscript", **kwargs):
    """Save a tiny CLIP as the official checkpoints are (TorchScript) or as a plain state dict.
    returns: path."""
    import clip

    model = tiny_clip(**kwargs)
    if kind == "state_dict":
        torch.save(model.state_dict(), path)
        return path
    resolution = model.visual.input_resolution
    example = (torch.zeros(1, 3, resolution, resolution), clip.tokenize(["a photo"]))
    with torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))
    return path


LEARNING_COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230),
                    "yellow": (230, 230, 30), "purple": (150, 30, 200), "cyan": (30, 220, 220),
                    "orange": (250, 140, 20), "pink": (250, 120, 190), "white": (245, 245, 245),
                    "black": (10, 10, 10), "brown": (120, 70, 20), "olive": (120, 120, 20)}


def write_colour_video(path, colour, num_frames, relevant, seed, size=32):
    """Frames of random noise, except `relevant` frames (at random places) of one colour."""
    rng = np.random.default_rng(seed)
    where = set(rng.choice(num_frames, size=relevant, replace=False).tolist())
    write_noise_video(path, num_frames, {i: colour for i in where}, rng, size=size)


def write_noise_video(path, num_frames, coloured, rng, fps=10, size=32, pix_fmt="yuv444p",
                      gop=None):
    """An H.264 video of random-noise frames (drawn from the numpy Generator rng), except the
    frames {index: (r, g, b)} in coloured, which are that one colour. pix_fmt "yuv420p" gives
    a video every browser plays; gop: a key frame every gop frames (x264's default: 250)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = pix_fmt
        stream.options = {"crf": "10", "preset": "ultrafast",
                          **({"g": str(gop), "keyint_min": str(gop)} if gop else {})}
        for i in range(num_frames):
            if i in coloured:
                image = np.empty((size, size, 3), np.uint8)
                image[...] = coloured[i]
            else:
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def build_colour_videos(root, videos_per_colour, num_frames=8, relevant=2, seed=0,
                        name="train"):
    """A CSV (video_path, caption) of colour videos under root; the caption names the colour
    of the few relevant frames. returns: the CSV path."""
    root = Path(root)
    (root / name).mkdir(parents=True, exist_ok=True)
    rows = ["video_path,caption"]
    for c, (colour_name, colour) in enumerate(LEARNING_COLOURS.items()):
        for k in range(videos_per_colour):
            path = f"{name}/{colour_name}_{k}.mp4"
            write_colour_video(root / path, colour, num_frames, relevant,
                               seed=seed * 100_000 + c * 1000 + k)
            rows.append(f"{path},a {colour_name} video")
    (root / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return root / f"{name}.csv"
