"""The largest pixel difference between the decoders' frames, on real codecs: H.264 with
B-frames (MP4), VP9 (WebM), MPEG-4 Part 2 with B-frames (MP4 and AVI), each a drifting random
texture that decodes like footage. Each decoder's num_frames frames are compared with decord's
and with the reference: PyAV decoding every frame in order and picking the same indices (what
the frames are, whatever a decoder's seeking does).

    python bench/decoder_differences.py              # 320x240, 4 s at 30 fps, 16 frames
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import encode_drifting_texture  # noqa: E402

DECODERS = ("decord", "pyav", "torchcodec")
# name: (file suffix, encoder, encoder options)
CODECS = {"H.264 with B-frames": (".mp4", "libx264", {"crf": "23", "bf": "3",
                                                      "preset": "medium"}),
          "VP9 in WebM": (".webm", "libvpx-vp9", {"crf": "32", "b": "0"}),
          "MPEG-4 Part 2 with B-frames, MP4": (".mp4", "mpeg4", {"qscale": "4", "bf": "2"}),
          "MPEG-4 Part 2 with B-frames, AVI": (".avi", "mpeg4", {"qscale": "4", "bf": "2"})}


def write_texture_video(path, encoder, options, seconds=4, width=320, height=240, fps=30):
    import av

    texture = np.random.default_rng(0).integers(0, 256, (height * 2, width * 2, 3),
                                                dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = options
        encode_drifting_texture(container, stream, texture, int(seconds * fps))


def decode_all_and_pick(path, indices):
    """The reference: PyAV decodes every frame in order; frame i is the i-th in presentation
    order. returns: uint8 [S, 3, H, W]."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sorted(((f.pts, f.to_ndarray(format="rgb24")) for f in
                         container.decode(stream)), key=lambda pair: pair[0])
    return torch.from_numpy(np.stack([frames[i][1] for i in indices])).permute(0, 3, 1, 2)


def differences(path, num_frames, decoders=DECODERS):
    """{decoder: (largest |difference| from decord or None, from the reference)}, or the
    decoder's error message in place of the pair."""
    from data_loader import read_video
    from clip_hitchhiker.errors import HitchhikerError

    decoded = {}
    for decoder in decoders:
        try:
            decoded[decoder] = read_video(path, num_frames, decoder=decoder)
        except HitchhikerError as e:
            decoded[decoder] = str(e)
    reference = None
    result = {}
    for decoder, outcome in decoded.items():
        if isinstance(outcome, str):
            result[decoder] = outcome
            continue
        frames, info = outcome
        if reference is None:
            reference = decode_all_and_pick(path, info["indices"])
        from_decord = None
        if not isinstance(decoded.get("decord", ""), str):
            from_decord = _largest(frames, decoded["decord"][0])
        result[decoder] = (from_decord, _largest(frames, reference))
    return result


def _largest(a, b):
    return int((a.int() - b.int()).abs().max())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "clip_hitchhiker_decoder_diff"))
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"largest |pixel difference| (8-bit levels), {args.num_frames} frames of 320x240, "
          "4 s at 30 fps: from decord / from PyAV decoding every frame")
    for name, (suffix, encoder, options) in CODECS.items():
        path = work / (name.replace(" ", "_").replace(",", "") + suffix)
        write_texture_video(path, encoder, options)
        parts = []
        for decoder, outcome in differences(path, args.num_frames).items():
            if isinstance(outcome, str):
                parts.append(f"{decoder} fails ({outcome[:80]})")
            else:
                parts.append(f"{decoder} {outcome[0]} / {outcome[1]}")
        print(f"{name}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
