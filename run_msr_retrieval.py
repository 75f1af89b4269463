"""Zero-shot text-to-video retrieval with CLIP on MSR-VTT (or your own CSV), by mean pooling and
query-scoring (Bain et al., "A CLIP-Hitchhiker's Guide to Long Video Retrieval").

    python run_msr_retrieval.py --num_frames 16
    torchrun --nproc_per_node 8 run_msr_retrieval.py --num_frames 120

The only module that chooses the device, loads CLIP, builds the DataLoader and prints.
"""
import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

import data_loader
from data_loader import CSVDataset, FramePreprocess, MSRVTTDataset, VideoDecodeError
from metrics import t2v_metrics, v2t_metrics
from query_scoring import similarity_meanpooling, similarity_queryscoring

CACHE_FORMAT = 1
_TEXT_BATCH = 256


class ModelLoadError(RuntimeError):
    """CLIP weights that cannot be found, downloaded or read; the message says what to do."""


class PeerFailure(RuntimeError):
    """Another rank of a distributed run failed; that rank reports the cause."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Zero-shot text-to-video retrieval of CLIP on MSR-VTT (default: 1k-A) or a "
                    "CSV of your own, by mean pooling and query-scoring.")
    add = parser.add_argument
    add("--num_frames", type=int, default=120, help="frames sampled per video (default 120)")
    add("--query_scoring_temp", type=float, nargs="+", default=[0.1],
        help="query-scoring softmax temperature(s); one result line each (default 0.1)")
    add("--batch_size", type=int, default=1, help="videos per DataLoader batch (default 1)")
    add("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
        help="DataLoader decoding workers (default: the CPUs, at most 8)")
    add("--frame_chunk", type=int, default=256,
        help="frames per encode_image call, across videos (default 256)")
    add("--model", default="ViT-B/16",
        help="a clip.available_models() name or a path to a checkpoint (TorchScript or state "
             "dict) (default ViT-B/16)")
    add("--download_root", default=None, help="where CLIP weights are downloaded "
                                              "(default ~/.cache/clip)")
    add("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    add("--split", default="jsfusion", choices=data_loader.SPLITS,
        help="MSR-VTT split: jsfusion (1k-A, 1 caption/video), miech (1k, all captions), "
             "full-test (2990 videos)")
    add("--csv", default=None, help="a CSV (video_path, caption) of your own videos, instead "
                                    "of MSR-VTT")
    add("--video_root", default=".", help="folder that --csv video paths are relative to")
    add("--data_root", default="./data", help="folder holding (or to receive) MSRVTT/")
    add("--msrvtt_url", default=data_loader.MSRVTT_URL, help="where to download MSRVTT.zip")
    add("--cache_dir", default="./cache", help="embedding cache folder (default ./cache)")
    add("--no_cache", action="store_true", help="neither read nor write the embedding cache")
    add("--save_embeddings", default=None, metavar="FILE",
        help="also write the embeddings (as in the cache) to FILE")
    add("--output_json", default=None, metavar="FILE",
        help="write configuration, versions, metrics, counts and timings to FILE")
    add("--skip_bad_videos", action="store_true",
        help="leave out videos that fail to decode (and their queries) instead of stopping")
    args = parser.parse_args(argv)
    for name in ("num_frames", "batch_size", "frame_chunk"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.num_workers < 0:
        parser.error(f"--num_workers must be >= 0, got {args.num_workers}")
    if any(not (t > 0 and np.isfinite(t)) for t in args.query_scoring_temp):
        parser.error(f"--query_scoring_temp values must be finite and > 0, got "
                     f"{args.query_scoring_temp}")
    return args


# ----------------------------------------------------------------------------------------------
# Device and processes


@dataclass
class Context:
    """Where this process runs: its device and, under torchrun, its rank."""
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0


def setup_context(device_arg):
    """Choose the device; under torchrun (WORLD_SIZE > 1) also join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        warnings.simplefilter("ignore")  # other ranks print nothing but errors
    if device_arg == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cpu" and rank == 0:
            warnings.warn("no CUDA device found: running on the CPU, which is slow for the real "
                          "dataset (pass --device cpu to silence this)", stacklevel=2)
    else:
        device = torch.device(device_arg)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device_arg}: CUDA is not available on this machine")
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        import torch.distributed as dist
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(device, rank, local_rank, world_size)


def collective_step(ctx, fn):
    """Run fn on this rank; if any rank raised, raise on every rank, so that none waits forever."""
    try:
        result, error = fn(), None
    except Exception as e:  # re-raised below, after the other ranks have been told
        result, error = None, e
    if ctx.world_size > 1:
        messages = all_gather_json(ctx, None if error is None else f"{type(error).__name__}: "
                                                                   f"{error}")
        failed = [f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None]
        if failed and error is None:
            raise PeerFailure("; ".join(failed))
    if error is not None:
        raise error
    return result


def all_gather_rows(ctx, rows):
    """Concatenate every rank's rows [n_r, ...] in rank order (n_r may differ). CPU in and out."""
    if ctx.world_size == 1:
        return rows
    import torch.distributed as dist
    on_device = rows.to(ctx.device)
    counts = [torch.zeros(1, dtype=torch.long, device=ctx.device) for _ in range(ctx.world_size)]
    dist.all_gather(counts, torch.tensor([len(rows)], device=ctx.device))
    counts = [int(c) for c in counts]
    padded = on_device.new_zeros((max(max(counts), 1), *rows.shape[1:]))
    padded[:len(rows)] = on_device
    gathered = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, counts)]).cpu()


def all_gather_json(ctx, obj):
    """Every rank's JSON-able obj, in rank order (JSON, so nothing received is unpickled)."""
    payload = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
    gathered = all_gather_rows(ctx, payload.clone())
    counts = all_gather_rows(ctx, torch.tensor([len(payload)]))
    chunks = torch.split(gathered, counts.tolist())
    return [json.loads(bytes(c.tolist()).decode()) for c in chunks]


def shard(count, ctx):
    """This rank's contiguous share of range(count); shares differ by at most one."""
    return np.array_split(np.arange(count), ctx.world_size)[ctx.rank].tolist()


# ----------------------------------------------------------------------------------------------
# Model and data


def load_clip_model(name_or_path, device, download_root=None):
    """CLIP by name (downloaded by clip.load) or from a checkpoint file.

    A checkpoint may be a TorchScript archive like the official ones, or a plain state dict
    (read with weights_only=True). returns: (model in eval mode, preprocess, model id for the
    cache: the name, or the file's sha256).
    """
    import clip

    if os.path.isfile(name_or_path):
        model_id = f"sha256:{_sha256_file(name_or_path)}"
        if _is_torchscript(name_or_path):
            model, preprocess = clip.load(name_or_path, device=device, jit=False)
        else:
            model, preprocess = _load_state_dict_checkpoint(name_or_path, device)
        return model.eval(), preprocess, model_id
    if name_or_path not in clip.available_models():
        raise ModelLoadError(f"--model {name_or_path!r} is neither a file nor one of "
                             f"{clip.available_models()}")
    try:
        model, preprocess = clip.load(name_or_path, device=device, jit=False,
                                      download_root=download_root)
    except (OSError, RuntimeError) as e:  # urllib errors are OSErrors; clip raises on a bad hash
        url = clip.clip._MODELS[name_or_path]
        raise ModelLoadError(f"could not download or read CLIP weights {name_or_path!r} ({e}). "
                             f"Fetch {url} on a machine with internet and pass the file with "
                             f"--model /path/to/{os.path.basename(url)}") from e
    return model.eval(), preprocess, name_or_path


def _is_torchscript(path):
    """TorchScript archives hold code/ and constants.pkl; torch.save zips do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def _load_state_dict_checkpoint(path, device):
    import clip

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ModelLoadError(f"cannot read checkpoint {path} as a TorchScript archive or a "
                             f"state dict ({e})") from e
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    try:
        model = clip.model.build_model(state_dict).to(device)
    except (KeyError, AttributeError, RuntimeError, TypeError) as e:
        raise ModelLoadError(f"{path} is not a CLIP state dict ({e})") from e
    if device.type == "cpu":
        model.float()  # as clip.load does on the CPU
    return model, clip.clip._transform(model.visual.input_resolution)


def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_dataset(args, preprocess, download):
    if args.csv:
        dataset = CSVDataset(args.csv, args.video_root, preprocess, args.num_frames,
                             skip_bad_videos=args.skip_bad_videos)
        dataset_id = {"csv_sha256": _sha256_file(args.csv),
                      "video_root": str(Path(args.video_root).resolve())}
    else:
        dataset = MSRVTTDataset(preprocess, args.num_frames, split=args.split,
                                data_root=args.data_root, download=download, url=args.msrvtt_url,
                                skip_bad_videos=args.skip_bad_videos, progress=download)
        dataset_id = {"msrvtt_split": args.split}
    queries = json.dumps(dataset.queries.to_numpy().tolist()).encode()
    dataset_id["queries_sha256"] = hashlib.sha256(queries).hexdigest()
    return dataset, dataset_id


# ----------------------------------------------------------------------------------------------
# Encoding


class ChunkedImageEncoder:
    """Feeds frames to model.encode_image in chunks of exactly `chunk` frames, across videos,
    so that small videos still fill the device and 120-frame batches never overflow it."""

    def __init__(self, model, chunk):
        self.model, self.chunk = model, chunk
        self.pending, self.pending_count, self.outputs = [], 0, []

    def add(self, frames):
        """frames: [n, 3, R, R] on the model's device."""
        self.pending.append(frames)
        self.pending_count += len(frames)
        while self.pending_count >= self.chunk:
            self._encode(self.chunk)

    def finish(self):
        """returns: float32 CPU [total frames, D], in the order added."""
        if self.pending_count:
            self._encode(self.pending_count)
        if not self.outputs:
            return torch.zeros(0, self.model.visual.output_dim)
        return torch.cat(self.outputs)

    def _encode(self, count):
        frames = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending = [frames[count:]]
        self.pending_count -= count
        features = self.model.encode_image(frames[:count].to(self.model.dtype))
        self.outputs.append(features.float().cpu())


def encode_videos(model, dataset, indices, args, ctx, show_progress):
    """Encode dataset[indices]. returns: (kept indices, float32 [n, F, D], [(index, error)])."""
    options = {}
    if args.num_workers > 0:
        # Keep a whole encode chunk decoded ahead, so that decoding overlaps with encoding.
        frames_per_round = args.num_workers * args.batch_size * args.num_frames
        options["prefetch_factor"] = max(2, math.ceil(args.frame_chunk / frames_per_round) + 1)
    loader = DataLoader(Subset(dataset, indices), batch_size=args.batch_size, shuffle=False,
                        num_workers=args.num_workers, pin_memory=ctx.device.type == "cuda",
                        **options)
    encoder = ChunkedImageEncoder(model, args.frame_chunk)
    kept, errors = [], []
    batches = tqdm(loader, desc="encoding videos", unit="batch", disable=not show_progress)
    try:
        for batch in batches:
            ok = torch.tensor([e == "" for e in batch["error"]])
            errors += [(int(i), e) for i, e in zip(batch["index"], batch["error"]) if e]
            kept += batch["index"][ok].tolist()
            if ok.any():
                video = batch["video"][ok].to(ctx.device, non_blocking=True)
                encoder.add(video.flatten(0, 1))
    except VideoDecodeError as e:
        # A worker's error arrives wrapped in its traceback; its last line is the message.
        message = str(e).strip().splitlines()[-1].split("VideoDecodeError: ")[-1]
        raise VideoDecodeError(f"{message}; pass --skip_bad_videos to leave such videos "
                               "out") from None
    features = encoder.finish()
    return kept, features.view(len(kept), args.num_frames, features.shape[-1]), errors


def encode_captions(model, captions, device):
    """captions: list of str. returns: float32 CPU [len(captions), D]."""
    import clip

    outputs = [torch.zeros(0, model.text_projection.shape[1])]
    for start in range(0, len(captions), _TEXT_BATCH):
        tokens = clip.tokenize(captions[start:start + _TEXT_BATCH], truncate=True).to(device)
        outputs.append(model.encode_text(tokens).float().cpu())
    return torch.cat(outputs)


def compute_embeddings(model, dataset, args, ctx):
    """Encode every video and every distinct caption, sharded across ranks; gathered on all.

    returns: the cache content (see cache_content) and the number of videos decoded here.
    """
    video_indices = shard(len(dataset), ctx)
    kept, video_embeds, errors = collective_step(ctx, lambda: encode_videos(
        model, dataset, video_indices, args, ctx, show_progress=ctx.is_main))
    kept = all_gather_rows(ctx, torch.tensor(kept, dtype=torch.long)).tolist()
    video_embeds = all_gather_rows(ctx, video_embeds)
    errors = [e for rank_errors in all_gather_json(ctx, errors) for e in rank_errors]
    distinct = list(dict.fromkeys(dataset.queries["caption"]))
    caption_indices = shard(len(distinct), ctx)
    text_embeds = collective_step(ctx, lambda: encode_captions(
        model, [distinct[i] for i in caption_indices], ctx.device))
    text_embeds = all_gather_rows(ctx, text_embeds)
    row_of = {c: i for i, c in enumerate(distinct)}
    query_rows = torch.tensor([row_of[c] for c in dataset.queries["caption"]], dtype=torch.long)
    content = cache_content(
        text_embeds=text_embeds[query_rows], video_embeds=video_embeds,
        video_ids=[dataset.video_ids[i] for i in kept],
        query_video_ids=dataset.queries["video_id"].tolist(),
        captions=dataset.queries["caption"].tolist(),
        skipped=[[dataset.video_ids[i], message] for i, message in sorted(errors)])
    return content, len(video_indices)


# ----------------------------------------------------------------------------------------------
# Cache


def cache_content(text_embeds, video_embeds, video_ids, query_video_ids, captions, skipped):
    """What the cache and --save_embeddings hold: plain tensors, strings and lists only.

    text_embeds: [Q, D] one row per query of the dataset (kept videos or not);
    video_embeds: [V, F, D] for the decoded videos video_ids; skipped: [[video_id, reason]].
    """
    return {"format": CACHE_FORMAT, "text_embeds": text_embeds, "video_embeds": video_embeds,
            "video_ids": video_ids, "query_video_ids": query_video_ids, "captions": captions,
            "skipped": skipped}


def cache_key(model_id, model_dtype, num_frames, dataset_id, preprocess):
    """Everything the embeddings depend on, as a canonical JSON string."""
    return json.dumps({"format": CACHE_FORMAT, "model": model_id, "model_dtype": str(model_dtype),
                       "num_frames": num_frames, "dataset": dataset_id,
                       "preprocess": preprocess.describe()}, sort_keys=True)


def cache_path(cache_dir, key):
    return Path(cache_dir) / f"embeddings-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"


def save_embeddings(path, content, key):
    write_atomically(path, lambda tmp: torch.save({**content, "key": key}, tmp))


def write_atomically(path, write):
    """write(tmp_path) into a temporary file beside path, then os.replace: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        tmp_name = f.name
    try:
        write(tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        os.unlink(tmp_name)
        raise


def load_cached_embeddings(path, key):
    """The cached content if path holds a complete entry for key, else None (with a warning
    when a file was there but unusable)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        _check_cache_content(content)
    except Exception as e:  # truncated zip, wrong types, missing fields: recompute
        warnings.warn(f"ignoring unreadable embedding cache {path} ({type(e).__name__}: {e}); "
                      "recomputing", stacklevel=2)
        return None
    if content.get("key") != key:
        warnings.warn(f"ignoring stale embedding cache {path} (made for other settings); "
                      "recomputing", stacklevel=2)
        return None
    return content


def _check_cache_content(content):
    if not isinstance(content, dict) or content.get("format") != CACHE_FORMAT:
        raise ValueError("not an embedding cache of this format")
    text, video = content["text_embeds"], content["video_embeds"]
    if text.ndim != 2 or video.ndim != 3 or text.shape[1] != video.shape[2]:
        raise ValueError(f"shapes {tuple(text.shape)}, {tuple(video.shape)} do not fit")
    if len(content["video_ids"]) != video.shape[0] or not (
            len(content["captions"]) == len(content["query_video_ids"]) == text.shape[0]):
        raise ValueError("ids and embeddings disagree in length")


# ----------------------------------------------------------------------------------------------
# Evaluation and output


def evaluate(content, temperatures):
    """Metrics per aggregation over the kept videos and their queries.

    returns: list of {"aggregation", "temperature", "t2v", "v2t"}; mean pooling first.
    """
    position = {v: i for i, v in enumerate(content["video_ids"])}
    keep = [i for i, v in enumerate(content["query_video_ids"]) if v in position]
    query_to_video = np.array([position[content["query_video_ids"][i]] for i in keep],
                              dtype=np.int64)
    text, video = content["text_embeds"][keep], content["video_embeds"]
    aggregations = [("mean-pooling", None, lambda: similarity_meanpooling(text, video))]
    aggregations += [("query-scoring", t, lambda t=t: similarity_queryscoring(text, video, t))
                     for t in temperatures]
    results = []
    for name, temperature, similarity in aggregations:
        sims = similarity()
        results.append({"aggregation": name, "temperature": temperature,
                        "t2v": t2v_metrics(sims, query_to_video=query_to_video),
                        "v2t": v2t_metrics(sims, query_to_video=query_to_video)})
    return results


def format_result_line(result, skipped_note=""):
    """The release's printed line, rounded: R@K and MedR to one decimal, MeanR to three."""
    rounded = {k: round(v, 3 if k == "MeanR" else 1) for k, v in result["t2v"].items()}
    label = "mean-pooling" if result["temperature"] is None else \
        f"{result['aggregation']}, temp: {result['temperature']}"
    return f"{rounded}  agg: {label}{skipped_note}"


def package_versions():
    versions = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "openai-clip", "decord", "numpy", "pandas"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_json(path, obj):
    write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


# ----------------------------------------------------------------------------------------------
# Main


def main(args):
    """Run the evaluation. returns: the report dict on rank 0 (None on other ranks)."""
    start = time.perf_counter()
    ctx = setup_context(args.device)
    try:
        return _run(args, ctx, start)
    finally:
        if ctx.world_size > 1:
            import torch.distributed as dist
            dist.destroy_process_group()


def _run(args, ctx, start):
    # Local rank 0 downloads weights and data first; the others then read them.
    first = collective_step(ctx, lambda: _prepare(args, ctx, download=True)
                            if ctx.local_rank == 0 else None)
    model, model_id, dataset, dataset_id = collective_step(
        ctx, lambda: first if ctx.local_rank == 0 else _prepare(args, ctx, download=False))
    key = cache_key(model_id, model.dtype, args.num_frames, dataset_id, dataset.preprocess)
    path = cache_path(args.cache_dir, key)
    loaded_at = time.perf_counter()

    cached = None if args.no_cache or not ctx.is_main else load_cached_embeddings(path, key)
    cache_hit = all_gather_json(ctx, cached is not None)[0] if ctx.world_size > 1 \
        else cached is not None
    decoded = 0
    if cache_hit:
        content = cached
    else:
        with torch.inference_mode():
            content, decoded = compute_embeddings(model, dataset, args, ctx)
    encoded_at = time.perf_counter()
    if not ctx.is_main:
        return None
    if not args.skip_bad_videos and content["skipped"]:
        video_id, reason = content["skipped"][0]
        raise VideoDecodeError(f"{len(content['skipped'])} video(s) failed to decode, e.g. "
                               f"{video_id}: {reason}; pass --skip_bad_videos to leave them out")
    if not cache_hit and not args.no_cache:
        save_embeddings(path, content, key)
    if args.save_embeddings:
        save_embeddings(args.save_embeddings, content, key)
    return _report(args, ctx, content, cache_hit, path, decoded,
                   {"start": start, "loaded": loaded_at, "encoded": encoded_at})


def _prepare(args, ctx, download):
    model, preprocess, model_id = load_clip_model(args.model, ctx.device, args.download_root)
    frame_dtype = torch.float16 if model.dtype == torch.float16 else torch.float32
    dataset, dataset_id = build_dataset(args, FramePreprocess(preprocess, frame_dtype), download)
    return model, model_id, dataset, dataset_id


def _report(args, ctx, content, cache_hit, path, decoded, times):
    num_videos = len(content["video_ids"])
    encode_seconds = times["encoded"] - times["loaded"]
    if cache_hit:
        print(f"embeddings loaded from cache {path} (no video decoded)")
    else:
        frames = num_videos * args.num_frames
        print(f"encoded {num_videos} videos ({frames} frames) in {encode_seconds:.1f} s: "
              f"{num_videos / encode_seconds:.2f} videos/s, {frames / encode_seconds:.1f} "
              f"frames/s")
    skipped = content["skipped"]
    kept_ids = set(content["video_ids"])
    num_queries = sum(v in kept_ids for v in content["query_video_ids"])
    skipped_queries = len(content["query_video_ids"]) - num_queries
    note = ""
    if skipped:
        note = (f"  [partial: {len(skipped)} bad video(s) and {skipped_queries} queries left out, "
                "not comparable with the benchmark]")
        for video_id, reason in skipped:
            print(f"skipped {video_id}: {reason}", file=sys.stderr)
    similarity_start = time.perf_counter()
    results = evaluate(content, args.query_scoring_temp)
    similarity_seconds = time.perf_counter() - similarity_start
    for result in results:
        print(format_result_line(result, note))
    report = {
        "config": vars(args), "versions": package_versions(), "device": str(ctx.device),
        "world_size": ctx.world_size, "results": results,
        "counts": {"videos": num_videos, "queries": num_queries, "skipped_videos": len(skipped),
                   "skipped_queries": skipped_queries, "decoded_videos": decoded,
                   "skipped": skipped},
        "cache": {"hit": cache_hit, "path": None if args.no_cache else str(path)},
        "timings_s": {"load": times["loaded"] - times["start"], "encode": encode_seconds,
                      "similarity_and_metrics": similarity_seconds,
                      "total": time.perf_counter() - times["start"]},
    }
    if args.output_json:
        write_json(args.output_json, report)
    return report


def cli(argv=None):
    # Third-party deprecation notices that a user of the CLI cannot act on.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    warnings.filterwarnings("ignore", message="`torch.jit", category=FutureWarning)
    args = parse_args(argv)
    try:
        main(args)
    except PeerFailure as e:
        if int(os.environ.get("RANK", "0")) == 0:  # other ranks stay quiet: the cause is printed
            print(f"error: {e}", file=sys.stderr)  # by the rank that failed and by rank 0
        sys.exit(1)
    except (data_loader.DatasetError, VideoDecodeError, ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
