"""Queries that are not text: an image, preprocessed exactly as the index's frames were, and a
moment of an indexed video ("more like this"), the mean of its unit frame embeddings. Both give
a [D] vector that VideoIndex.search_embeddings scores by query-scoring as it scores a text's.
"""
from pathlib import Path

import numpy as np
import torch

from clip_hitchhiker.errors import ConfigError, VideoIndexError

MAX_IMAGE_PIXELS = 50_000_000  # a larger image is refused (Pillow's decompression-bomb guard)
# The formats photos and screenshots come in. Not every format Pillow knows: its EPS reader runs
# Ghostscript on the file, and the rarer readers are more code for an upload to reach.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


def image_tensor(image):
    """uint8 [1, 3, H, W] RGB of a path or a PIL image, as the video decoders give frames, and
    as a viewer shows the image: turned as its EXIF orientation says, transparency over white."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image, formats=IMAGE_FORMATS) as opened:
                return image_tensor(opened)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            raise ConfigError(f"image {image} cannot be read ({e}); give a JPEG, PNG, WebP, "
                              "GIF, BMP or TIFF") from e
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise ConfigError(f"the image has {image.width} x {image.height} pixels, more than "
                          f"{MAX_IMAGE_PIXELS}; give a smaller one")
    pixels = np.asarray(as_seen(image))  # [H, W, 3]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None]


def as_seen(image):
    """The RGB PIL image a viewer shows: EXIF orientation applied (phones store photos sideways
    and say so), transparent pixels over white (their hidden colour is often black)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image)
    return image.convert("RGB")


def frame_preprocess_of(model, recorded, folder):
    """The data_loader.FramePreprocess whose description is the index's recorded one (the
    antialias choice and the dtype are not in the model, only in that record), made for this
    model's dtype. model: a backends.LoadedModel."""
    from clip_hitchhiker.models.clip_models import frame_dtype_for
    from data_loader import FramePreprocess

    for antialias in (False, True):
        for dtype in (torch.float32, torch.float16):
            if FramePreprocess(model.preprocess, dtype, antialias=antialias).describe() == recorded:
                return FramePreprocess(model.preprocess, frame_dtype_for(model.dtype),
                                       antialias=antialias)
    raise VideoIndexError(f"{folder} records the preprocessing {recorded!r}, which its model's "
                          "cannot reproduce; rebuild the index")


def moment_embedding(index, video_id, start, end):
    """float32 [D]: the mean of the unit frame embeddings of video `video_id` (the table's id)
    whose times lie in [start, end] seconds, or of the frame nearest the middle if none does."""
    rows = np.flatnonzero(np.asarray(index.table["id"]) == int(video_id))
    if len(rows) == 0:
        raise VideoIndexError(f"{index.folder} holds no video with id {video_id}")
    frames = torch.from_numpy(np.array(index.frames(int(rows[0])), dtype=np.float32))  # [F, D]
    times = np.asarray(index.table["frame_times"][int(rows[0])], dtype=float)
    inside = (times >= start) & (times <= end)
    if not inside.any():
        distance = np.abs(times - (start + end) / 2)
        inside = distance == distance.min()
    units = frames / frames.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return units[torch.from_numpy(inside)].mean(0)
