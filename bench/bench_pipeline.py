"""The CLI's pipeline against its floors, measured in one run: decoding alone (DataLoader with the
same workers, frames discarded) and encoding alone (encode_image on ready frames, same chunks).

Synthetic MSR-VTT-like videos (320x240, 10-20 s, 30 fps, moving texture) and the real ViT-B/16
architecture with random weights (no download needed).

    python bench/bench_pipeline.py                      # 50 videos, 8 frames each, CPU
    python bench/bench_pipeline.py --num_frames 16 --device cuda
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
import torch  # noqa: E402


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


def make_videos(folder, count):
    """count videos of 10-20 s in folder, and a captions CSV. returns: the CSV path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["video_path,caption"]
    for i in range(count):
        name = f"video{i:04d}.mp4"
        if not (folder / name).is_file():
            write_textured_video(folder / name, 10 + (i * 7) % 11, seed=i)
        rows.append(f"{name},a synthetic clip number {i}")
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    return folder / "captions.csv"


def vit_b16_checkpoint(path):
    """The ViT-B/16 architecture with random weights, as a state dict the CLI can load."""
    from clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                 vision_patch_size=16, context_length=77, vocab_size=49408,
                 transformer_width=512, transformer_heads=8, transformer_layers=12)
    torch.save(model.state_dict(), path)
    return path


def time_decoding(dataset, args):
    from torch.utils.data import DataLoader
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                        pin_memory=args.device.startswith("cuda"))
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def time_encoding(model, frames, total_frames, chunk, device):
    """encode_image over total_frames frames in chunks of `chunk` (the raw model forward)."""
    frames = frames.to(device)
    with torch.inference_mode():
        model.encode_image(frames[:2])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        done = 0
        while done < total_frames:
            count = min(chunk, total_frames - done)
            model.encode_image(frames[:count])
            done += count
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=50)
    parser.add_argument("--num_frames", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--frame_chunk", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "clip_hitchhiker_bench"))
    args = parser.parse_args()

    import run_msr_retrieval
    from data_loader import CSVDataset, FramePreprocess

    work = Path(args.work_dir)
    csv = make_videos(work / "videos", args.videos)
    checkpoint = vit_b16_checkpoint(work / "vit_b16_random.pt")
    device = torch.device(args.device)
    model, preprocess, _ = run_msr_retrieval.load_clip_model(str(checkpoint), device)
    frame_dtype = torch.float16 if model.dtype == torch.float16 else torch.float32
    dataset = CSVDataset(csv, work / "videos", FramePreprocess(preprocess, frame_dtype),
                         args.num_frames)
    total_frames = args.videos * args.num_frames
    print(f"{args.videos} videos x {args.num_frames} frames = {total_frames} frames, "
          f"ViT-B/16 ({model.dtype}) on {device}, {args.num_workers} workers, "
          f"{torch.get_num_threads()} torch threads")

    decode_s = time_decoding(dataset, args)
    frames = dataset[0]["video"].repeat(max(1, args.frame_chunk // args.num_frames + 1), 1, 1, 1)
    encode_s = time_encoding(model, frames[:args.frame_chunk], total_frames, args.frame_chunk,
                             device)
    start = time.perf_counter()
    report = run_msr_retrieval.main(run_msr_retrieval.parse_args([
        "--csv", str(csv), "--video_root", str(work / "videos"), "--model", str(checkpoint),
        "--num_frames", str(args.num_frames), "--batch_size", str(args.batch_size),
        "--num_workers", str(args.num_workers), "--frame_chunk", str(args.frame_chunk),
        "--device", args.device, "--no_cache"]))
    pipeline_s = time.perf_counter() - start
    print(f"decode alone:  {decode_s:7.1f} s  ({total_frames / decode_s:8.1f} frames/s)")
    print(f"encode alone:  {encode_s:7.1f} s  ({total_frames / encode_s:8.1f} frames/s)")
    phase_s = report["timings_s"]["encode"]
    print(f"pipeline, the CLI's encoding phase (videos and captions): {phase_s:7.1f} s  "
          f"({total_frames / phase_s:.1f} frames/s, {args.videos / phase_s:.2f} videos/s)")
    print(f"pipeline, the whole CLI (model load and metrics too):      {pipeline_s:7.1f} s")
    print(f"encoding phase / (decode + encode) = {phase_s / (decode_s + encode_s):.2f}; "
          f"/ max(decode, encode) = {phase_s / max(decode_s, encode_s):.2f}; whole CLI / "
          f"(decode + encode) = {pipeline_s / (decode_s + encode_s):.2f}")


if __name__ == "__main__":
    main()
