"""The CLI's encoding pipeline against its floors, measured in one run: decoding alone (DataLoader
with the same workers, frames discarded) and encoding alone (encode_image on ready frames, same
chunks), against compute_embeddings, the function the CLI calls.

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

import torch  # noqa: E402


def time_decoding(dataset, args):
    from torch.utils.data import DataLoader
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                        pin_memory=args.device.startswith("cuda"))
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def worker_throughput(dataset, count, frame_preprocess):
    """Frames/s that one DataLoader worker delivers to the main process, as the CLI runs it
    (one thread, frames sent through shared memory): decoding alone, the workers' job with
    --preprocess_on device, and decoding + CLIP preprocessing, their job with --preprocess_on
    workers. The first video (worker start-up) is not timed. returns: (decode, both)."""
    from torch.utils.data import DataLoader, Subset

    from data_loader import collate_videos
    rates = []
    for preprocess in (None, frame_preprocess):
        dataset.preprocess = preprocess
        loader = DataLoader(Subset(dataset, range(count + 1)), batch_size=1, num_workers=1,
                            collate_fn=collate_videos, prefetch_factor=4)
        batches = iter(loader)
        next(batches)
        start = time.perf_counter()
        frames = sum(len(video) for batch in batches for video in batch["video"])
        rates.append(frames / (time.perf_counter() - start))
    dataset.preprocess = frame_preprocess
    return tuple(rates)


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
    parser.add_argument("--worker_videos", type=int, default=10,
                        help="videos for the per-worker throughput at 16 and 120 frames")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "clip_hitchhiker_bench"))
    args = parser.parse_args()

    from bench.common import make_videos, random_clip_checkpoint
    from clip_hitchhiker.torchrun import Context
    from data_loader import FramePreprocess
    from clip_hitchhiker.backends import load_model
    from clip_hitchhiker.clip_models import compute_embeddings, frame_dtype_for
    from clip_hitchhiker.dataset_choice import build_dataset

    work = Path(args.work_dir)
    csv = make_videos(work / "videos", args.videos)
    checkpoint = random_clip_checkpoint(work / "ViT-B-16_random.pt")
    device = torch.device(args.device)
    start = time.perf_counter()
    model = load_model("clip", str(checkpoint), device)
    frames = FramePreprocess(model.preprocess, frame_dtype_for(model.dtype))
    dataset, _ = build_dataset(frames, args.num_frames, dataset="csv", csv=csv,
                               video_root=work / "videos")
    load_s = time.perf_counter() - start
    total_frames = args.videos * args.num_frames
    print(f"{args.videos} videos x {args.num_frames} frames = {total_frames} frames, "
          f"ViT-B/16 ({model.dtype}) on {device}, {args.num_workers} workers, "
          f"{torch.get_num_threads()} torch threads")

    for num_frames in (16, 120):
        sampled, _ = build_dataset(frames, num_frames, dataset="csv", csv=csv,
                                   video_root=work / "videos")
        decode_fps, both_fps = worker_throughput(sampled, args.worker_videos, frames)
        print(f"one worker, {num_frames:3d} frames/video: decode only {decode_fps:7.1f} frames/s "
              f"(--preprocess_on device), decode + preprocess {both_fps:7.1f} frames/s "
              f"(--preprocess_on workers): {decode_fps / both_fps:.2f}x")
    decode_s = time_decoding(dataset, args)
    sample = dataset[0]["video"].repeat(max(1, args.frame_chunk // args.num_frames + 1), 1, 1, 1)
    encode_s = time_encoding(model, sample[:args.frame_chunk], total_frames, args.frame_chunk,
                             device)
    start = time.perf_counter()
    with torch.inference_mode():
        compute_embeddings(model, dataset, Context(device), batch_size=args.batch_size,
                           num_workers=args.num_workers, frame_chunk=args.frame_chunk)
    phase_s = time.perf_counter() - start
    print(f"decode alone:  {decode_s:7.1f} s  ({total_frames / decode_s:8.1f} frames/s)")
    print(f"encode alone:  {encode_s:7.1f} s  ({total_frames / encode_s:8.1f} frames/s)")
    print(f"pipeline, compute_embeddings (videos and captions): {phase_s:7.1f} s  "
          f"({total_frames / phase_s:.1f} frames/s, {args.videos / phase_s:.2f} videos/s); "
          f"model load and dataset {load_s:.1f} s")
    print(f"pipeline / (decode + encode) = {phase_s / (decode_s + encode_s):.2f}; "
          f"/ max(decode, encode) = {phase_s / max(decode_s, encode_s):.2f}")


if __name__ == "__main__":
    main()
