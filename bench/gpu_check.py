"""GPU check: encode, decode, end-to-end (preprocessing in the workers and on the device) and
similarity throughput, each with how it was measured; the device preprocessing's and the device
scoring's agreement with the CPU.

Run through bench/gpu_check.sh (which installs missing packages from a local wheel folder).
--cpu-dry-run runs the same steps at tiny sizes on the CPU, with a tiny CLIP.
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

from bench.common import MSRVTT_MEAN_KBPS, make_videos, random_clip_checkpoint  # noqa: E402

FULL = {"videos": 200, "seconds": (10, 20), "chunks": (256, 1024), "frames": (16, 120),
        "similarity": (1000, 1000, 120, 512), "iters": 10}
DRY = {"videos": 4, "seconds": (1, 2), "chunks": (4, 8), "frames": (2, 3),
       "similarity": (20, 20, 8, 32), "iters": 2}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device, iters):
    fn()  # warm-up
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def check_encode(model, device, sizes):
    resolution = model.module.visual.input_resolution
    for chunk in sizes["chunks"]:
        frames = torch.randn(chunk, 3, resolution, resolution, device=device, dtype=model.dtype)
        with torch.inference_mode():
            seconds = best_time(lambda: model.encode_image(frames), device, sizes["iters"])
        print(f"encode: {chunk / seconds:9.1f} frames/s  (encode_image on {chunk} random "
              f"{resolution}px frames, {model.dtype}, best of {sizes['iters']} after warm-up)")


def check_decode(csv, frames, workers, sizes):
    from torch.utils.data import DataLoader

    from data_loader import CSVDataset
    for num_frames in sizes["frames"]:
        dataset = CSVDataset(csv, csv.parent, frames, num_frames)
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, pin_memory=True)
        start = time.perf_counter()
        count = sum(len(batch["video"]) for batch in loader)
        seconds = time.perf_counter() - start
        print(f"decode: {count * num_frames / seconds:9.1f} frames/s  ({count} videos x "
              f"{num_frames} frames through decord + CLIP preprocessing, {workers} DataLoader "
              f"workers, batch 4, no model; worker start-up included)")


def check_gpu_decode(csv, device, sizes):
    """torchcodec decoding on the device (--decode_on device) against torchcodec on the CPU:
    throughput and the largest pixel difference. Nothing depends on it; a machine without
    torchcodec or its FFmpeg libraries says so and goes on."""
    from clip_hitchhiker.errors import ConfigError
    from clip_hitchhiker.video.decoders import load_torchcodec
    from data_loader import read_video
    try:
        load_torchcodec()
    except ConfigError as e:
        print(f"gpu decode: skipped ({e})")
        return
    paths = sorted(csv.parent.glob("*.mp4"))
    num_frames = sizes["frames"][-1]
    seconds, largest = {}, 0
    for where in ("cpu", str(device)):
        try:
            read_video(paths[0], num_frames, decoder="torchcodec", device=where)  # warm-up
        except Exception as e:  # noqa: BLE001 - a report, not a library: say why and go on
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"gpu decode: torchcodec fails on {where} ({type(e).__name__}: {first})")
            return
        synchronize(torch.device(where))
        start = time.perf_counter()
        decoded = [read_video(p, num_frames, decoder="torchcodec", device=where)[0]
                   for p in paths]
        synchronize(torch.device(where))
        seconds[where] = time.perf_counter() - start
        if where == "cpu":
            on_cpu = decoded
        else:
            largest = max(int((d.cpu().int() - c.int()).abs().max())
                          for d, c in zip(decoded, on_cpu))
    frames = len(paths) * num_frames
    print(f"gpu decode: {frames / seconds[str(device)]:9.1f} frames/s on {device}, "
          f"{frames / seconds['cpu']:9.1f} frames/s on the CPU (one thread); max |pixel "
          f"difference| {largest} levels  (torchcodec, {len(paths)} videos x {num_frames} "
          "frames, one process, no DataLoader)")


def check_preprocess_difference(csv, frames, device):
    """Largest difference of the device preprocessing from the CPU workers' on real frames."""
    from data_loader import read_video_frames
    paths = sorted(csv.parent.glob("*.mp4"))[:4]
    largest = 0.0
    for path in paths:
        raw = read_video_frames(path, 16)
        on_cpu = frames(raw).float()
        on_device = frames(raw.to(device)).float().cpu()
        largest = max(largest, float((on_device - on_cpu).abs().max()))
    print(f"preprocess device vs workers: max |difference| {largest:.2e}  ({len(paths)} videos x "
          f"16 frames, {frames.describe()}; normalised units)")


def check_end_to_end(csv, model, frames, device, workers, sizes):
    """compute_embeddings as the CLI runs it, with the workers preprocessing and with the device
    preprocessing; the largest difference between the two runs' embeddings."""
    from clip_hitchhiker.torchrun import Context
    from clip_hitchhiker.models.clip_models import compute_embeddings
    from clip_hitchhiker.datasets.choice import build_dataset
    for num_frames in sizes["frames"]:
        embeddings = {}
        for placement in ("workers", "device"):
            dataset, _ = build_dataset(frames if placement == "workers" else None, num_frames,
                                       dataset="csv", csv=csv, video_root=csv.parent)
            start = time.perf_counter()
            with torch.inference_mode():
                content, _ = compute_embeddings(
                    model, dataset, Context(device), batch_size=4, num_workers=workers,
                    frame_chunk=256, device_preprocess=frames if placement == "device" else None)
            seconds = time.perf_counter() - start
            embeddings[placement] = content["video_embeds"]
            videos = len(content["video_ids"])
            print(f"end-to-end: {videos / seconds:7.2f} videos/s, "
                  f"{videos * num_frames / seconds:9.1f} frames/s  (preprocess on {placement}; "
                  f"compute_embeddings as the CLI: {num_frames} frames, batch 4, {workers} "
                  f"workers, frame_chunk 256, {videos} videos and their captions)")
        difference = (embeddings["device"] - embeddings["workers"]).abs().max()
        print(f"embeddings device vs workers preprocessing, {num_frames} frames: max |difference| "
              f"{float(difference):.2e} ({model.dtype} model)")


def same_results(first, second):
    """Whether two evaluate() results are equal all the way down (ranks are arrays in dicts)."""
    import numpy as np
    if isinstance(first, dict):
        return (isinstance(second, dict) and first.keys() == second.keys()
                and all(same_results(first[k], second[k]) for k in first))
    if isinstance(first, (list, tuple)):
        return (len(first) == len(second)
                and all(same_results(a, b) for a, b in zip(first, second)))
    if isinstance(first, np.ndarray):
        return np.array_equal(first, second)
    return first == second


def rank_differences(first, second):
    """(ranks that differ, ranks compared, largest |metric difference|) between two evaluate()
    results of the same content: the device's float rounding can reorder near-tied scores."""
    import numpy as np
    differ = compared = 0
    largest = 0.0
    for a, b in zip(first, second):
        for direction in ("t2v", "v2t"):
            differ += int((np.asarray(a["ranks"][direction])
                           != np.asarray(b["ranks"][direction])).sum())
            compared += np.asarray(a["ranks"][direction]).size
            largest = max([largest] + [abs(a[direction][k] - b[direction][k])
                                       for k in a[direction]])
    return differ, compared, largest


def check_scoring(device, sizes):
    """evaluate() on the device against the CPU: identical metrics, or how few ranks differ."""
    from query_scoring import similarity_queryscoring
    from run_msr_retrieval import evaluate
    T, V, F, D = sizes["similarity"]
    g = torch.Generator().manual_seed(1)
    # Queries near their video's frames, so that ranks are spread, not all at chance.
    video = torch.randn(V, F, D, generator=g)
    text = video[torch.arange(T) % V].mean(1) + 2 * torch.randn(T, D, generator=g)
    content = {"text_embeds": text, "video_embeds": video, "video_ids": list(range(V)),
               "query_video_ids": [i % V for i in range(T)]}
    evaluate(content, [0.1], device)  # warm-up: CUDA's start is not the scoring's time
    timings = {}
    for where in ("cpu", device.type):
        start = time.perf_counter()
        results = evaluate(content, [0.01, 0.1, 1.0], torch.device(where))
        timings[where] = (time.perf_counter() - start, results)
    same = same_results(timings["cpu"][1], timings[device.type][1])
    differ, compared, largest = rank_differences(timings["cpu"][1], timings[device.type][1])
    scores = {where: similarity_queryscoring(text.to(where), video.to(where), 0.1).cpu()
              for where in ("cpu", device.type)}
    gap = float((scores["cpu"] - scores[device.type]).abs().max())
    print(f"scoring: evaluate on {device.type} {timings[device.type][0]:.2f} s, on cpu "
          f"{timings['cpu'][0]:.2f} s; metrics identical: {same}; ranks differ for {differ} of "
          f"{compared}, largest metric difference {largest:.3g}; largest |score difference| "
          f"{gap:.2e} (float32, tau 0.1)  (T,V,F,D = {T},{V},{F},{D}, mean pooling and 3 "
          "temperatures, t2v and v2t)")


def check_similarity(device, sizes):
    from query_scoring import similarity_queryscoring
    T, V, F, D = sizes["similarity"]
    g = torch.Generator(device=device).manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        text = torch.randn(T, D, device=device, generator=g).to(dtype)
        vids = torch.randn(V, F, D, device=device, generator=g).to(dtype)
        frames = vids.reshape(V * F, D)
        floor = best_time(lambda: text @ frames.T, device, sizes["iters"])
        ours = best_time(lambda: similarity_queryscoring(text, vids, 0.1), device, sizes["iters"])
        peak = ""
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            similarity_queryscoring(text, vids, 0.1)
            peak = f", peak +{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f} MiB"
        print(f"similarity_queryscoring {dtype}: {ours * 1e3:8.2f} ms, matmul floor "
              f"{floor * 1e3:8.2f} ms ({ours / floor:.2f}x){peak}  (T,V,F,D = {T},{V},{F},{D}; "
              f"floor = text [T,D] @ frames [V*F,D].T in {dtype}; best of {sizes['iters']})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="the same steps at tiny sizes on the CPU")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "gpu_check"))
    args = parser.parse_args()
    sizes = DRY if args.cpu_dry_run else FULL
    if not args.cpu_dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; use --cpu-dry-run to exercise the script on a CPU")
    device = torch.device("cpu" if args.cpu_dry_run else "cuda")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    workers = 2 if args.cpu_dry_run else min(16, os.cpu_count() or 1)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU dry run)"
    print(f"GPU: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"{os.cpu_count()} CPUs")

    from clip_hitchhiker.models.backends import load_model
    from clip_hitchhiker.models.clip_models import frame_dtype_for
    from data_loader import FramePreprocess
    shape = "tiny" if args.cpu_dry_run else "ViT-B/16"
    checkpoint = random_clip_checkpoint(work / f"{shape.replace('/', '-')}_random.pt", shape)
    model = load_model("clip", str(checkpoint), device)
    frames = FramePreprocess(model.preprocess, frame_dtype_for(model.dtype))
    start = time.perf_counter()
    csv = make_videos(work / "videos", sizes["videos"], sizes["seconds"])
    print(f"made {sizes['videos']} videos of 320x240, {sizes['seconds'][0]}-{sizes['seconds'][1]}"
          f" s at 30 fps, {MSRVTT_MEAN_KBPS} kbit/s, in {time.perf_counter() - start:.1f} s")
    check_encode(model, device, sizes)
    check_decode(csv, frames, workers, sizes)
    check_gpu_decode(csv, device, sizes)
    check_preprocess_difference(csv, frames, device)
    check_end_to_end(csv, model, frames, device, workers, sizes)
    check_similarity(device, sizes)
    check_scoring(device, sizes)


if __name__ == "__main__":
    main()
