"""The CLI's encoding pipeline against its floors, measured in one run: decoding alone (DataLoader
with the same workers, frames discarded) and encoding alone (encode_image on ready frames, same
chunks), against compute_embeddings, the function the CLI calls. Then what one DataLoader worker
delivers with --preprocess_on device (decode only) and workers (decode + preprocess).

Synthetic MSR-VTT-like videos (320x240, 10-20 s, 30 fps, moving texture) at MSR-VTT's mean
bitrate, and for the per-worker figures also at 3.5x that bitrate (decoding costs more), with the
real ViT-B/16 architecture and random weights (no download needed).

    python bench/bench_pipeline.py                      # 50 videos, 8 frames each, CPU
    python bench/bench_pipeline.py --num_frames 16 --device cuda
    python bench/bench_pipeline.py --quick              # tiny sizes and model: checks it runs
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

from bench.common import MSRVTT_MEAN_KBPS, make_videos, mean_kbps  # noqa: E402


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


def report_worker_throughput(frame_preprocess, work, sizes):
    """Prints one worker's frames/s in both modes at 16 and 120 frames, on videos at MSR-VTT's
    mean bitrate and on videos at crf 23 (about 3.5x that bitrate)."""
    from clip_hitchhiker.datasets.choice import build_dataset
    for kbps in (MSRVTT_MEAN_KBPS, None):
        csv = make_videos(work, sizes["worker_videos"] + 1, sizes["seconds"], kbps=kbps)
        actual = mean_kbps(csv)
        label = f"{'crf 23' if kbps is None else f'{kbps} kbit/s'} (measured {actual:.0f})"
        for num_frames in (16, 120):
            sampled, _ = build_dataset(frame_preprocess, num_frames, dataset="csv", csv=csv,
                                       video_root=csv.parent)
            decode_fps, both_fps = worker_throughput(sampled, sizes["worker_videos"],
                                                     frame_preprocess)
            print(f"one worker, {label}, {num_frames:3d} frames/video: decode only "
                  f"{decode_fps:7.1f} frames/s (--preprocess_on device), decode + preprocess "
                  f"{both_fps:7.1f} frames/s (--preprocess_on workers): "
                  f"{decode_fps / both_fps:.2f}x")


def report_pipeline(model, frame_preprocess, csv, device, sizes, args):
    """Prints decoding alone, encoding alone and compute_embeddings, and their ratios."""
    from clip_hitchhiker.models.clip_models import compute_embeddings
    from clip_hitchhiker.datasets.choice import build_dataset
    from clip_hitchhiker.torchrun import Context
    dataset, _ = build_dataset(frame_preprocess, args.num_frames, dataset="csv", csv=csv,
                               video_root=csv.parent)
    total_frames = sizes["videos"] * args.num_frames
    chunk = sizes["frame_chunk"]
    decode_s = time_decoding(dataset, args)
    sample = dataset[0]["video"].repeat(max(1, chunk // args.num_frames + 1), 1, 1, 1)
    encode_s = time_encoding(model, sample[:chunk], total_frames, chunk, device)
    start = time.perf_counter()
    with torch.inference_mode():
        compute_embeddings(model, dataset, Context(device), batch_size=args.batch_size,
                           num_workers=args.num_workers, frame_chunk=chunk)
    phase_s = time.perf_counter() - start
    print(f"decode alone:  {decode_s:7.1f} s  ({total_frames / decode_s:8.1f} frames/s)")
    print(f"encode alone:  {encode_s:7.1f} s  ({total_frames / encode_s:8.1f} frames/s)")
    print(f"pipeline, compute_embeddings (videos and captions): {phase_s:7.1f} s  "
          f"({total_frames / phase_s:.1f} frames/s, {sizes['videos'] / phase_s:.2f} videos/s)")
    print(f"pipeline / (decode + encode) = {phase_s / (decode_s + encode_s):.2f}; "
          f"/ max(decode, encode) = {phase_s / max(decode_s, encode_s):.2f}")


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
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, 3 videos of 1-2 s: checks that the script runs")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(),
                                                           "clip_hitchhiker_bench"))
    args = parser.parse_args()

    from bench.common import random_clip_checkpoint
    from clip_hitchhiker.models.backends import load_model
    from clip_hitchhiker.models.clip_models import frame_dtype_for
    from data_loader import FramePreprocess

    sizes = ({"videos": 3, "seconds": (1, 2), "worker_videos": 2, "frame_chunk": 4,
              "shape": "tiny"} if args.quick else
             {"videos": args.videos, "seconds": (10, 20), "worker_videos": args.worker_videos,
              "frame_chunk": args.frame_chunk, "shape": "ViT-B/16"})
    work = Path(args.work_dir) / ("quick" if args.quick else "")
    device = torch.device(args.device)
    checkpoint = random_clip_checkpoint(
        work / f"{sizes['shape'].replace('/', '-')}_random.pt", sizes["shape"])
    model = load_model("clip", str(checkpoint), device)
    frame_preprocess = FramePreprocess(model.preprocess, frame_dtype_for(model.dtype))
    csv = make_videos(work / "videos", sizes["videos"], sizes["seconds"])
    print(f"{sizes['videos']} videos x {args.num_frames} frames at {MSRVTT_MEAN_KBPS} kbit/s, "
          f"{sizes['shape']} ({model.dtype}) on {device}, {args.num_workers} workers, "
          f"{torch.get_num_threads()} torch threads")
    report_worker_throughput(frame_preprocess, work / "videos", sizes)
    report_pipeline(model, frame_preprocess, csv, device, sizes, args)


if __name__ == "__main__":
    main()
