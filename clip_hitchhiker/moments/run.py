"""Zero-shot moment localisation with the evaluator (run_msr_retrieval.py --dataset charades_sta,
or --dataset activitynet --task moments): does query-scoring find the moment a sentence
describes in its own video?

Stages: prepare (model, queries, videos) -> frames sampled by time (--fps) and encoded, or
loaded from the cache -> localise each query in its video (query-scoring's weights through the
moment rule of clip_hitchhiker.moments.rule, and the baselines on the same frames) -> R@1 at IoU
0.3/0.5/0.7 and mIoU (clip_hitchhiker.moments.evaluation) -> bootstrap -> report.

The moment rule gives one moment per query, so R@5 is not reported.
"""
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from clip_hitchhiker import embedding_cache
from clip_hitchhiker.models.backends import load_model
from clip_hitchhiker.video.batch_memory import (available_memory_bytes, check_decoding_memory,
                                          decoding_memory_bytes, longest_video)
from clip_hitchhiker.bootstrap import bootstrap_means
from clip_hitchhiker.models.clip_models import (ChunkedImageEncoder, check_embeddings, encode_captions,
                                         frame_dtype_for)
from clip_hitchhiker.datasets.choice import dataset_folders
from clip_hitchhiker.errors import ConfigError, VideoDecodeError
from clip_hitchhiker.datasets.moment_data import build_moment_dataset
from clip_hitchhiker.moments.evaluation import (WINDOW_FRACTIONS, best_frame_window, centred_window,
                                         clip_to_video, interval_iou, moment_metrics,
                                         per_query_columns, sliding_window_moments)
from clip_hitchhiker.moments.rule import DEFAULT_MASS, moment_from_weights
from clip_hitchhiker.models.options import resolve_preprocess_on
from clip_hitchhiker.output_files import cache_is_writable, check_output_files
from clip_hitchhiker.reporting import package_versions
from data_loader import FramePreprocess, collate_videos, ignore_interrupts
from query_scoring import queryscoring_frame_weights

MOMENT_FORMAT = "moments-1"
TASKS = ("retrieval", "moments")
SLIDING = "sliding windows (mean pooling)"
BEST_FRAME = "best frame, mean-length window"
WHOLE_VIDEO = "prior: whole video"
CENTRED = "prior: mean length, centred"
# The moment options' defaults, filled in by check_moment_arguments for a moment run only
# (None on the command line means "not given", so that a retrieval run can refuse them).
MOMENT_DEFAULTS = {"fps": 1.0, "max_frames": None, "moment_mass": DEFAULT_MASS,
                   "window_fractions": list(WINDOW_FRACTIONS)}


# ----------------------------------------------------------------------------------------------
# Options


def add_moment_arguments(parser):
    """--task, --fps, --max_frames, --moment_mass, --window_fractions,
    --charades_sta_annotations, as one argument group."""
    group = parser.add_argument_group("moment localisation (--dataset charades_sta, or "
                                      "activitynet --task moments)")
    add = group.add_argument
    add("--task", default=None, choices=TASKS,
        help="retrieval (the default) or moments: localise each sentence in its own video "
             "(activitynet; implied by charades_sta)")
    add("--fps", type=float, default=None,
        help="moments: frames sampled per second of video, by time (default 1)")
    add("--max_frames", type=int, default=None,
        help="moments: at most this many frames per video (longer videos are sampled more "
             "sparsely, evenly; default: no cap)")
    add("--moment_mass", type=float, default=None,
        help="moments: the share of query-scoring's weight the moment must hold (default "
             f"{DEFAULT_MASS}, as search)")
    add("--window_fractions", type=float, nargs="+", default=None,
        help="moments: the sliding-window baseline's lengths, as fractions of the video "
             "(default 0.1 ... 1.0 in steps of 0.1)")
    add("--charades_sta_annotations", default=None, metavar="FILE|URL",
        help="charades_sta: the test annotations (charades_sta_test.txt, from TALL); a URL is "
             "downloaded once into DATA_ROOT/Charades-STA/, named for the URL (default: "
             "DATA_ROOT/Charades-STA/charades_sta_test.txt)")
    return group


def is_moment_run(args):
    return args.dataset == "charades_sta" or args.task == "moments"


def check_moment_arguments(parser, args):
    """Fill in the task --dataset implies, and refuse options that do not fit it."""
    if args.dataset == "charades_sta":
        if args.task == "retrieval":
            parser.error("--dataset charades_sta is a moment benchmark: --task moments")
        args.task = "moments"
    args.task = args.task or "retrieval"
    if args.task == "moments" and args.dataset not in ("charades_sta", "activitynet"):
        parser.error(f"--task moments is for --dataset charades_sta or activitynet, not "
                     f"{args.dataset}")
    if args.charades_sta_annotations and args.dataset != "charades_sta":
        parser.error("--charades_sta_annotations is for --dataset charades_sta")
    given = [f"--{name}" for name in MOMENT_DEFAULTS if getattr(args, name) is not None]
    if args.task != "moments":
        if given:  # they would be ignored: say so rather than run the other task
            parser.error(f"{', '.join(given)}: for moment localisation only (--dataset "
                         f"charades_sta, or --task moments); this is a {args.task} run")
        return
    for name, default in MOMENT_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.plot or args.compare:
        parser.error("--plot and --compare are for retrieval; moments report R@1 and mIoU")
    if not (math.isfinite(args.fps) and args.fps > 0):
        parser.error(f"--fps must be a number > 0, got {args.fps}")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error(f"--max_frames must be >= 1, got {args.max_frames}")
    if not (0 < args.moment_mass <= 1):
        parser.error(f"--moment_mass must be in (0, 1], got {args.moment_mass}")
    if any(not (0 < f <= 1) for f in args.window_fractions):
        parser.error(f"--window_fractions must be in (0, 1], got {args.window_fractions}")


# ----------------------------------------------------------------------------------------------
# Encode


def encode_by_time(model, dataset, device, *, batch_size=1, num_workers=0, frame_chunk=256,
                   device_preprocess=None, on_failures=None):
    """Every video's frames (as many as its duration gives) and every query's sentence.

    device_preprocess and on_failures: as for clip_models.encode_videos. returns: the content
    --save_embeddings writes (see moment_content).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_videos, worker_init_fn=ignore_interrupts)
    encoder = ChunkedImageEncoder(model, frame_chunk)
    kept, counts, decoded, failures = [], [], [], []
    for batch in loader:
        batch_failures = [[v, e] for v, e in zip(batch["video_id"], batch["error"]) if e]
        if batch_failures and on_failures is not None:
            on_failures(batch_failures)
        failures += batch_failures
        for video_id, video, error, info in zip(batch["video_id"], batch["video"],
                                                batch["error"], batch["decoded"]):
            if error:
                continue
            frames = video.to(device)
            encoder.add(frames if device_preprocess is None else device_preprocess(frames))
            kept.append(video_id)
            counts.append(len(frames))
            decoded.append(info)
    texts, _ = dataset.text_rows()
    distinct = list(dict.fromkeys(texts))
    text_rows = encode_captions(model, distinct, device)
    row_of = {text: i for i, text in enumerate(distinct)}
    text_embeds = text_rows[torch.tensor([row_of[t] for t in texts], dtype=torch.long)]
    queries = dataset.queries
    return moment_content(
        text_embeds, encoder.finish(), counts, kept, decoded,
        query_video_ids=queries["video_id"].tolist(), captions=queries["caption"].tolist(),
        moments=queries[["start", "end"]].to_numpy().tolist(), skipped=failures)


def moment_content(text_embeds, frame_embeds, frame_counts, video_ids, decoded, *,
                   query_video_ids, captions, moments, skipped):
    """What the cache and --save_embeddings hold (plain tensors, numbers, strings and lists).

    text_embeds: [Q, D], one per query; frame_embeds: [N, D], the kept videos' frames one
    after the other (frame_counts: [V] how many each); decoded: read_video_times' info of each
    kept video ("times": [F] seconds, "duration"); moments: [Q] annotated [start, end].
    """
    return {"format": MOMENT_FORMAT, "task": "moments", "text_embeds": text_embeds,
            "frame_embeds": frame_embeds, "frame_counts": list(frame_counts),
            "video_ids": list(video_ids),
            "frame_times": [list(map(float, info["times"])) for info in decoded],
            "durations": [float(info["duration"]) for info in decoded],
            "decoded": dict(zip(video_ids, decoded)), "query_video_ids": query_video_ids,
            "captions": captions, "moments": moments, "skipped": skipped}


def check_moment_content(content):
    """Raise ValueError unless content is a moment_content of consistent sizes."""
    if not isinstance(content, dict) or content.get("format") != MOMENT_FORMAT:
        raise ValueError("not a moment-localisation embedding file of this format")
    frames, counts = content["frame_embeds"], content["frame_counts"]
    if frames.ndim != 2 or sum(counts) != len(frames) or any(c < 1 for c in counts):
        raise ValueError("frame embeddings and frame counts disagree")
    if not (len(content["video_ids"]) == len(counts) == len(content["frame_times"])
            == len(content["durations"])):
        raise ValueError("videos, counts, times and durations disagree in length")
    if any(len(t) != c for t, c in zip(content["frame_times"], counts)):
        raise ValueError("a video's frame times and frame count disagree")
    if not (len(content["text_embeds"]) == len(content["captions"]) == len(content["moments"])
            == len(content["query_video_ids"])):
        raise ValueError("queries, captions and moments disagree in length")


# ----------------------------------------------------------------------------------------------
# Localise and score


def localise(content, temperatures, mass=DEFAULT_MASS, window_fractions=WINDOW_FRACTIONS):
    """Each query of a kept video localised in that video, by every method on the same frames.

    Query-scoring at each temperature: its frame weights through moments.moment_from_weights.
    Baselines: sliding windows (moment_eval.sliding_window_moments); the best frame with a
    window of the mean ground-truth length; and two video-blind priors (the whole video, and
    the mean ground-truth length centred). The mean length is the mean over the scored queries
    of (clipped moment length / duration), a statistic of the answers, so the priors are as
    good as a video-blind guess can be.
    returns: (results: [{"label", "method", "temperature", "moments": [Q', 2], "ious": [Q']}],
    facts: {"queries": the scored query indices, "truth": [Q', 2] clipped, "clipped": count,
    "zero_length": count, "mean_length_fraction"}).
    """
    position = {v: i for i, v in enumerate(content["video_ids"])}
    scored = [q for q, v in enumerate(content["query_video_ids"]) if v in position]
    if not scored:
        raise ValueError("no query has a decoded video")
    video_of = np.array([position[content["query_video_ids"][q]] for q in scored])
    durations = np.asarray(content["durations"], dtype=np.float64)
    truth, clipped = clip_to_video(np.asarray(content["moments"], dtype=np.float64)[scored],
                                   durations[video_of])
    mean_fraction = float(np.mean((truth[:, 1] - truth[:, 0]) / durations[video_of]))
    temperatures = list(dict.fromkeys(temperatures))
    labels = [f"query-scoring, temp: {t}" for t in temperatures]
    labels += [SLIDING, BEST_FRAME, WHOLE_VIDEO, CENTRED]
    predicted = {label: np.zeros((len(scored), 2)) for label in labels}
    offsets = np.concatenate([[0], np.cumsum(content["frame_counts"])])
    for v in np.unique(video_of):
        rows = np.flatnonzero(video_of == v)  # positions in `scored` of this video's queries
        frames = content["frame_embeds"][offsets[v]:offsets[v + 1]].double()  # [F, D]
        text = content["text_embeds"][[scored[r] for r in rows]].double()  # [T, D]
        moments = _localise_video(text, frames, content["frame_times"][v], durations[v],
                                  temperatures, mass, window_fractions,
                                  mean_fraction * durations[v])
        for label, video_moments in zip(labels, moments):
            predicted[label][rows] = video_moments
    results = [{"label": label,
                "method": label if temperature is None else "query-scoring",
                "temperature": temperature, "moments": predicted[label],
                "ious": interval_iou(predicted[label], truth)}
               for label, temperature in zip(labels, temperatures + [None] * 4)]
    facts = {"queries": scored, "truth": truth, "clipped": int(clipped.sum()),
             "zero_length": int((truth[:, 1] == truth[:, 0]).sum()),
             "mean_length_fraction": mean_fraction}
    return results, facts


def _localise_video(text, frames, times, duration, temperatures, mass, window_fractions,
                    mean_length):
    """One video's queries by every method. text: [T, D]; frames: [F, D]; times: [F] seconds.
    returns: [T, 2] moments of query-scoring at each temperature, then the sliding windows,
    the best frame, the whole video and the centred mean length."""
    moments = []
    for temperature in temperatures:
        weights = queryscoring_frame_weights(text, frames[None], temperature)[:, 0]  # [T, F]
        moments.append([[m["start"], m["end"]] for m in
                        (moment_from_weights(w, times, duration, mass) for w in weights.numpy())])
    moments.append(sliding_window_moments(text.numpy(), frames.numpy(), times, duration,
                                          window_fractions)[0])
    cosines = (_unit(text) @ _unit(frames).T).numpy()  # [T, F]
    moments.append([best_frame_window(c, times, duration, mean_length) for c in cosines])
    moments.append([(0.0, duration)] * len(text))
    moments.append([centred_window(duration, mean_length)] * len(text))
    return moments


def _unit(rows):
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)


def format_moment_line(label, metrics, note=""):
    """The release's kind of line: the metrics rounded to one decimal, then the method."""
    rounded = {name: round(value, 1) for name, value in metrics.items()}
    return f"{rounded}  agg: {label}{note}"


def format_moment_bootstrap_line(label, intervals, num_queries):
    """One line: the intervals of a method, and its paired difference from the sliding
    windows (difference [interval] p-value) when it has one."""
    def fmt(interval, sign=""):
        return f"[{interval[0]:{sign}.1f}, {interval[1]:{sign}.1f}]"

    text = ", ".join(f"{m} {fmt(i)}" for m, i in intervals["intervals"][label].items())
    line = (f"{100 * intervals['confidence']:.0f}% CI ({intervals['resamples']} resamples of "
            f"{num_queries} queries, seed {intervals['seed']}): {text}")
    if label in intervals["differences"]:
        parts = [f"{m} {d['difference']:+.1f} {fmt(d['interval'], '+')} p={d['p_value']:.3g}"
                 for m, d in intervals["differences"][label].items()]
        line += f"; minus {SLIDING}: " + ", ".join(parts)
    return f"{line}  agg: {label}"


# ----------------------------------------------------------------------------------------------
# Run


def run_moments(args, ctx, start, *, check_decode_failures, preprocess_id):
    """The moment benchmark, from the evaluator's parsed arguments (one process).

    check_decode_failures(skipped, skip_bad_videos, cache_file=None) and
    preprocess_id(frame_preprocess, placement, device): the evaluator's own rules, so that
    both tasks decide them in one place. returns: the report dict.
    """
    if ctx.world_size > 1:
        raise ConfigError("moment localisation runs in one process: start it with python, "
                          "not torchrun")
    model = load_model(args.backend, args.model, ctx.device, args.pretrained, args.download_root)
    frame_preprocess = FramePreprocess(model.preprocess, frame_dtype_for(model.dtype),
                                       antialias=args.antialias)
    placement = resolve_preprocess_on(args.preprocess_on, ctx.device)
    dataset, dataset_id = build_moment_dataset(
        frame_preprocess if placement == "workers" else None, args.fps, args.max_frames,
        dataset=args.dataset, split=args.split, data_root=args.data_root,
        video_root=args.video_root, annotations=args.charades_sta_annotations,
        videos_url=args.charades_url, activitynet_url=args.activitynet_url,
        check_files=not args.skip_bad_videos)
    key = embedding_cache.cache_key(model.model_id, model.dtype,
                                    {"fps": args.fps, "max_frames": args.max_frames},
                                    dataset_id, preprocess_id(frame_preprocess, placement,
                                                              ctx.device))
    path = embedding_cache.cache_path(args.cache_dir, key)
    write_cache = _check_outputs(args, dataset, path)
    if dataset.missing:
        print(f"{len(dataset.missing)} of {len(dataset)} videos are missing, e.g. "
              f"{dataset.missing[:3]}; they are left out and the result is marked partial",
              file=sys.stderr)
    loaded_at = time.perf_counter()
    content, cache_hit = _embed(args, ctx, model, dataset, key, path, check_decode_failures,
                                frame_preprocess if placement == "device" else None)
    encode_seconds = time.perf_counter() - loaded_at
    num_frames = len(content["frame_embeds"])
    print(f"embeddings loaded from cache {path} (no video decoded)" if cache_hit else
          f"encoded {len(content['video_ids'])} videos ({num_frames} frames at {args.fps:g} "
          f"fps) in {encode_seconds:.1f} s")
    for video_id, reason in content["skipped"]:
        print(f"skipped {video_id}: {reason}", file=sys.stderr)
    results, facts = localise(content, args.query_scoring_temp, args.moment_mass,
                              args.window_fractions)
    note = "" if not content["skipped"] else (
        f"  [partial: {len(content['skipped'])} bad video(s) and "
        f"{len(content['captions']) - len(facts['queries'])} queries left out, not comparable "
        "with the benchmark]")
    for result in results:
        result["metrics"] = moment_metrics(result["ious"])
        print(format_moment_line(result["label"], result["metrics"], note))
    intervals = _bootstrap(args, results, len(facts["queries"])) if args.bootstrap else None
    report = _report(args, ctx, model, frame_preprocess, placement, dataset_id, content,
                     results, facts, intervals)
    report["cache"] = {"hit": cache_hit, "path": None if args.no_cache else str(path)}
    report["timings_s"] = {"load": loaded_at - start, "encode": encode_seconds,
                           "total": time.perf_counter() - start}
    embedding_cache.write_run_outputs(
        content, key, report, cache_file=path if write_cache and not cache_hit else None,
        embeddings_file=args.save_embeddings, report_file=args.output_json)
    return report


def _check_outputs(args, dataset, cache_file):
    """Before any decoding: outputs writable, no input overwritten (the cache entry this run
    reads or writes is one). returns: whether the cache can be written."""
    inputs = [p for p in (args.model, dataset.annotation_file) if p and Path(p).is_file()]
    inputs += [] if args.no_cache else [cache_file]
    check_output_files({"--output_json": args.output_json,
                        "--save_embeddings": args.save_embeddings},
                       inputs + dataset.video_paths, dataset_folders(args.dataset,
                                                                     args.data_root))
    return not args.no_cache and cache_is_writable(args.cache_dir)


def _embed(args, ctx, model, dataset, key, path, check_decode_failures, device_preprocess):
    """The content from the cache, or encoded; checked: decode failures, at least one video,
    no broken embeddings. returns: (content, cache hit)."""
    content = None if args.no_cache else embedding_cache.load_cached_embeddings(
        path, key, check=check_moment_content)
    cache_hit = content is not None
    if not cache_hit:
        _check_memory(args, dataset, device_preprocess)
        with torch.inference_mode():
            content = encode_by_time(
                model, dataset, ctx.device, batch_size=args.batch_size,
                num_workers=args.num_workers, frame_chunk=args.frame_chunk,
                device_preprocess=device_preprocess,
                on_failures=lambda failed: check_decode_failures(failed, args.skip_bad_videos))
    check_decode_failures(content["skipped"], args.skip_bad_videos, path if cache_hit else None)
    if not content["video_ids"]:
        reasons = "; ".join(f"{v}: {r}" for v, r in content["skipped"][:3])
        raise VideoDecodeError(f"no video could be decoded ({len(content['skipped'])} tried), "
                               f"e.g. {reasons}")
    check_embeddings(content["text_embeds"], content["frame_embeds"][None], args.model)
    return content, cache_hit


def _check_memory(args, dataset, device_preprocess):
    """Before decoding: refuse settings whose batches cannot fit in this machine's memory. A
    video decoded by time holds all its frames, so the longest one (from the headers) sets the
    size; the DataLoader keeps its default prefetch of 2 batches a worker."""
    longest = longest_video(dataset.video_paths)
    if longest is None:
        return
    seconds, (height, width) = longest
    frames = max(1, math.ceil(seconds * args.fps))
    frames = min(frames, args.max_frames) if args.max_frames else frames
    workers_preprocess = device_preprocess is None
    settings = dict(batch_size=args.batch_size, num_frames=frames, num_workers=args.num_workers)
    needed = decoding_memory_bytes(
        **settings, height=height, width=width, prefetch=2,
        crop=dataset.preprocess.crop if workers_preprocess else None,
        itemsize=dataset.preprocess.dtype.itemsize if workers_preprocess else 1)
    check_decoding_memory(needed, available_memory_bytes(), **settings,
                          resolution=(height, width),
                          lower="--fps, --max_frames, --batch_size or --num_workers")


def _bootstrap(args, results, num_queries):
    """Intervals of every method and paired differences from the sliding windows."""
    values = {r["label"]: per_query_columns(r["ious"]) for r in results}
    intervals = bootstrap_means(values, args.bootstrap, args.seed, baseline=SLIDING)
    for result in results:
        print(format_moment_bootstrap_line(result["label"], intervals, num_queries))
    return intervals


def _report(args, ctx, model, frame_preprocess, placement, dataset_id, content, results, facts,
            intervals):
    """Everything --output_json holds: settings, data, counts, metrics and every moment."""
    scored = facts["queries"]
    return {
        "config": vars(args), "versions": package_versions(), "device": str(ctx.device),
        "task": "moments", "dataset": dataset_id, "model": model.info,
        "preprocess": {"on": placement, "antialias": args.antialias,
                       "description": frame_preprocess.describe()},
        "sampling": {"fps": args.fps, "max_frames": args.max_frames,
                     "moment_mass": args.moment_mass,
                     "window_fractions": list(args.window_fractions)},
        "counts": {"videos": len(content["video_ids"]), "queries": len(scored),
                   "frames": len(content["frame_embeds"]),
                   "skipped_videos": len(content["skipped"]),
                   "skipped_queries": len(content["captions"]) - len(scored),
                   "clipped_moments": facts["clipped"],
                   "zero_length_moments": facts["zero_length"], "skipped": content["skipped"]},
        "mean_length_fraction": facts["mean_length_fraction"],
        "results": [{"label": r["label"], "method": r["method"],
                     "temperature": r["temperature"], **r["metrics"]} for r in results],
        "bootstrap": intervals,
        "queries": {"video_ids": [content["query_video_ids"][q] for q in scored],
                    "truth": facts["truth"].tolist(),
                    "moments": {r["label"]: r["moments"].tolist() for r in results},
                    "ious": {r["label"]: r["ious"].tolist() for r in results}},
    }
