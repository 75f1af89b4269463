"""Search test data: videos of noise with one segment of a colour at a known time, and a tiny CLIP
whose weights are set by hand so that the text "a red video" and a red frame get the same
embedding (each encoder averages its tokens and keeps the colour channels; see colour_clip).
"""
from pathlib import Path

import numpy as np

from clip_hitchhiker.synthetic_data import write_noise_video

# Colours far apart once CLIP normalises them, and far from the grey that noise averages to.
SEARCH_COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230),
                  "yellow": (230, 230, 30), "purple": (150, 30, 200), "teal": (30, 220, 220),
                  "orange": (250, 140, 20), "pink": (250, 120, 190), "black": (10, 10, 10),
                  "brown": (120, 70, 20)}
VIDEO_FPS = 4


def write_segment_video(path, colour, seconds, segment, seed, size=32, **video_options):
    """Noise frames at VIDEO_FPS, except those whose time lies in segment = (start, end)
    seconds, which are uniformly `colour`. video_options: write_noise_video's pix_fmt, gop."""
    num_frames = int(seconds * VIDEO_FPS)
    coloured = {i: colour for i in range(num_frames) if segment[0] <= i / VIDEO_FPS < segment[1]}
    write_noise_video(path, num_frames, coloured, np.random.default_rng(seed), fps=VIDEO_FPS,
                      size=size, **video_options)


def build_segment_videos(folder, colours=tuple(SEARCH_COLOURS), seed=0, **video_options):
    """One video per colour, 8 to 14 s long, its colour in a 3 or 5 s segment at a seeded place.
    video_options: write_noise_video's pix_fmt, gop (the same videos otherwise).
    returns: {colour: (path, (start, end))}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth = {}
    for c, name in enumerate(colours):
        seconds = int(rng.integers(8, 15))
        length = int(rng.choice([3, 5]))
        start = int(rng.integers(0, seconds - length + 1))
        path = folder / f"{name}.mp4"
        write_segment_video(path, SEARCH_COLOURS[name], seconds, (start, start + length),
                            seed=seed * 1000 + c, **video_options)
        truth[name] = (str(path.resolve()), (float(start), float(start + length)))
    return truth


def colour_clip_state_dict():
    """A tiny clip.model.CLIP state dict (widths 64, embedding 32) that embeds colours.

    Image: the patch embedding keeps each patch's mean normalised R, G, B in channels 0..2; the
    one attention layer (zero queries and keys: uniform attention, identity values) gives the
    class token the patches' mean; the projection keeps channels 0..2 after LayerNorm.
    Text: the colour words' token embeddings are that colour's normalised R, G, B; the causal
    uniform attention averages them into the end token; the projection keeps channels 0..2.
    So "a red video" and a red frame both embed as LayerNorm(red)[0:3].
    """
    import torch
    from clip.simple_tokenizer import SimpleTokenizer

    from tests.synthetic import tiny_clip

    state = {k: torch.zeros_like(v) for k, v in tiny_clip().state_dict().items()}
    width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    for c in range(3):
        state["visual.conv1.weight"][c, c] = 1.0 / (patch * patch)
        state["visual.proj"][c, c] = 1.0
        state["text_projection"][c, c] = 1.0
    for tower, scale in (("visual.transformer", 5 / 4), ("transformer", 1.0)):
        block = f"{tower}.resblocks.0"
        state[f"{block}.attn.in_proj_weight"][2 * width:] = torch.eye(width)
        # The visual class token starts at zero, so the mean over 5 tokens is 4/5 of the patches'.
        state[f"{block}.attn.out_proj.weight"] = torch.eye(width) * scale
    for name in list(state):
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight",
                          "ln_final.weight")):
            state[name] = torch.ones_like(state[name])
    state["logit_scale"] = torch.tensor(float(np.log(100)))
    tokenizer = SimpleTokenizer()
    for name, colour in SEARCH_COLOURS.items():
        token = tokenizer.encoder[f"{name}</w>"]
        state["token_embedding.weight"][token, :3] = torch.tensor(normalised_colour(colour))
    return state


def normalised_colour(colour):
    """R, G, B as CLIP's preprocessing normalises them."""
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    return [(v / 255 - m) / s for v, m, s in zip(colour, mean, std)]


def save_colour_clip(path):
    import torch

    torch.save(colour_clip_state_dict(), path)
    return Path(path)


def build_colour_index(root, **video_options):
    """The colour CLIP, the ten segment videos (video_options: write_noise_video's) and an index
    of them under root. returns: {"root", "model", "truth", "index"}."""
    import search_videos

    root = Path(root)
    model = save_colour_clip(root / "colour.pt")
    truth = build_segment_videos(root / "videos", **video_options)
    index = root / "index"
    search_videos.main(search_videos.parse_args(
        ["index", str(root / "videos"), "--index", str(index), "--model", str(model),
         "--device", "cpu", "--num_workers", "0"]))
    return {"root": root, "model": model, "truth": truth, "index": index}


def colour_image(path, colour, size=(40, 30)):
    """A PNG of one colour (a name of SEARCH_COLOURS)."""
    from PIL import Image

    Image.new("RGB", size, SEARCH_COLOURS[colour]).save(path)
    return Path(path)
