"""Zero-shot evaluation of CLIP by mean pooling and query-scoring (Bain et al., "A
CLIP-Hitchhiker's Guide to Long Video Retrieval"): text-to-video retrieval on MSR-VTT (or any
dataset of the registry, clip_hitchhiker.datasets, or your own CSV), classification on Charades
and Kinetics-400, or the whole standard suite in one table.

    python run_msr_retrieval.py --num_frames 16
    python run_msr_retrieval.py --suite --num_frames 16 --query_scoring_temp 0.1 1
    torchrun --nproc_per_node 8 run_msr_retrieval.py --num_frames 120

Stages: parse -> prepare (model, dataset) -> embed, or load from the cache -> evaluate -> report
(for --suite, each dataset in turn, then the table).
The only module that chooses the device, builds the DataLoader and prints; only parse_args, main
and cli read the argparse namespace.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from clip_hitchhiker import embedding_cache
from clip_hitchhiker.models.backends import list_models, load_model
from clip_hitchhiker.models.clip_models import (check_embeddings, compute_embeddings,
                                         compute_text_fields, frame_dtype_for,
                                         prefetch_factor)
from clip_hitchhiker.datasets import get_entry, registry, suite_names
from clip_hitchhiker.datasets.charades import charades_map
from clip_hitchhiker.datasets.choice import (add_dataset_arguments, build_dataset,
                                            check_dataset_arguments, count_difference,
                                            dataset_folders, default_urls, resolve_video_root)
from clip_hitchhiker.datasets.kinetics import kinetics_accuracy
from clip_hitchhiker.errors import (ConfigError, DatasetError, HitchhikerError, OutputError,
                                    PeerFailure, VideoDecodeError)
from clip_hitchhiker.models.options import (add_encoding_arguments, add_model_arguments,
                                           check_model_arguments, decode_device, loader_workers,
                                           resolve_preprocess_on)
from clip_hitchhiker.moments.run import (add_moment_arguments, check_moment_arguments,
                                        is_moment_run, run_moments)
from clip_hitchhiker.output_files import cache_is_writable, check_output_files
from clip_hitchhiker.video.batch_memory import (available_memory_bytes, check_decoding_memory,
                                          decoding_memory_bytes, largest_resolution)
from clip_hitchhiker.bootstrap import MAX_RESAMPLES, MIN_RESAMPLES, bootstrap
from clip_hitchhiker.suite import (TABLE_SUFFIXES, csv_table, markdown_table, suite_plan,
                                   suite_rows)
from clip_hitchhiker.plots import PLOT_FORMATS, require_matplotlib, save_figure, temperature_figure
from clip_hitchhiker.reporting import (compare_reports, format_bootstrap_line, interruption_note,
                                       is_release_configuration, package_versions, partial_note,
                                       print_published, print_results, published_comparison,
                                       result_label, run_manifest, silence_third_party_notices)
from clip_hitchhiker.torchrun import (DEFAULT_TIMEOUT_S, broadcast_json, collective_step,
                                      process_group)
from clip_hitchhiker.video.decoders import (check_decoder, decoder_id, decoder_line,
                                            resolve_decoder)
from data_loader import FramePreprocess
from metrics import (ranks_from_counts, ranks_to_metrics, t2v_rank_counts, v2t_group_ranks,
                     v2t_ranks)
from query_scoring import similarity_meanpooling, similarity_queryscoring

# More queries than this tying their video's score with another's get a warning.
TIE_WARNING_FRACTION = 0.01
DEFAULT_TABLE = "suite"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Zero-shot evaluation of CLIP by mean pooling and query-scoring: "
                    "text-to-video retrieval on MSR-VTT (default: 1k-A), MSVD, DiDeMo, LSMDC, "
                    "VATEX, ActivityNet Captions or a CSV of your own; action recognition on "
                    "Charades and Kinetics-400; moment localisation on Charades-STA and "
                    "ActivityNet Captions; or the whole suite (--suite) in one table.")
    add = parser.add_argument
    add("--num_frames", type=int, default=120, help="frames sampled per video (default 120)")
    add("--query_scoring_temp", type=float, nargs="+", default=[0.1],
        help="query-scoring softmax temperature(s); one result line each (default 0.1)")
    add("--list_models", action="store_true",
        help="print the clip model names and the open_clip (architecture, pretrained) pairs, "
             "then exit")
    add("--dist_timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
        help="under torchrun, how long ranks wait for one another before the run stops and "
             f"names the rank that did not answer (default {DEFAULT_TIMEOUT_S:g})")
    add_model_arguments(parser)
    add_encoding_arguments(parser)
    add_dataset_arguments(parser)
    add_moment_arguments(parser)
    add("--cache_dir", default="./cache", help="embedding cache folder (default ./cache)")
    add("--no_cache", action="store_true", help="neither read nor write the embedding cache")
    add("--save_embeddings", default=None, metavar="FILE",
        help="also write the embeddings (as in the cache) to FILE")
    add("--output_json", default=None, metavar="FILE",
        help="write configuration, versions, metrics, counts and timings to FILE")
    add("--skip_bad_videos", action="store_true",
        help="leave out videos that fail to decode (and their queries) instead of stopping")
    add("--bootstrap", type=int, default=0, metavar="N",
        help="N bootstrap resamples of the queries: 95%% intervals of every metric and paired "
             "differences, with p-values, of query-scoring from mean pooling (moments: from the "
             "sliding windows); 100 to 100000 resamples, or 0: off (the default)")
    add("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    add("--plot", default=None, metavar="FILE",
        help="draw R@1/5/10 against the temperatures to FILE (.png, .svg or .pdf; needs "
             "matplotlib)")
    add("--compare", default=None, metavar="REPORT.json",
        help="an earlier --output_json report: print the metric differences and the videos "
             "decoded differently (frame count, sampled indices, resolution)")
    add("--suite", nargs="*", default=None, metavar="NAME",
        help="run the standard zero-shot suite: every dataset named (default: "
             f"{', '.join(suite_names())}) whose data is on disk, with the same model, frames "
             "and temperatures, and write one table (--table); the others are listed with what "
             "to fetch. Nothing is downloaded; videos are read from each dataset's folder under "
             "--data_root (docs/datasets.md)")
    add("--table", default=DEFAULT_TABLE, metavar="PREFIX",
        help=f"--suite: write the table to PREFIX.md, PREFIX.csv and PREFIX.json (default "
             f"{DEFAULT_TABLE})")
    args = parser.parse_args(argv)
    check_suite_arguments(parser, args)
    check_dataset_arguments(parser, args)
    check_moment_arguments(parser, args)
    check_model_arguments(parser, args)
    if args.num_frames < 1:
        parser.error(f"--num_frames must be >= 1, got {args.num_frames}")
    check_bootstrap_arguments(parser, args)
    if args.plot and Path(args.plot).suffix.lower() not in PLOT_FORMATS:
        parser.error(f"--plot must end in one of {', '.join(PLOT_FORMATS)}, got {args.plot!r}")
    if not (args.dist_timeout > 0 and np.isfinite(args.dist_timeout)):
        parser.error(f"--dist_timeout must be a positive number of seconds, got "
                     f"{args.dist_timeout}")
    if any(not (t > 0 and np.isfinite(t)) for t in args.query_scoring_temp):
        parser.error(f"--query_scoring_temp values must be finite and > 0, got "
                     f"{args.query_scoring_temp}")
    return args


def check_suite_arguments(parser, args):
    """--suite names datasets that can run in it, and takes no option of a single dataset."""
    if args.suite is None:
        if args.table != DEFAULT_TABLE:
            parser.error("--table is for --suite")
        return
    runnable = [n for n, e in registry().items() if e.build is not None and n != "csv"]
    unknown = [n for n in args.suite if n not in runnable]
    if unknown:
        parser.error(f"--suite: unknown or unsuitable dataset(s) {unknown}; choose from "
                     f"{', '.join(runnable)}")
    single = {"--dataset": args.dataset != "msrvtt", "--csv": args.csv, "--split": args.split,
              "--video_root": args.video_root, "--output_json": args.output_json,
              "--save_embeddings": args.save_embeddings, "--plot": args.plot,
              "--compare": args.compare, "--task moments": args.task == "moments"}
    given = [option for option, value in single.items() if value]
    if given:
        parser.error(f"--suite runs each dataset with its own split and folders and writes one "
                     f"table (--table); it cannot go with {', '.join(given)}")


def check_bootstrap_arguments(parser, args):
    """--bootstrap 0 (off) or within the documented bounds, and a seed numpy accepts; checked
    here because a failure after the metrics print would lose --output_json."""
    if args.bootstrap and not MIN_RESAMPLES <= args.bootstrap <= MAX_RESAMPLES:
        parser.error(f"--bootstrap must be 0 (off) or between {MIN_RESAMPLES} (fewer make a "
                     f"95% interval of a few extreme draws) and {MAX_RESAMPLES} (more only cost "
                     f"memory and time), got {args.bootstrap}; 1000 to 10000 is usual")
    if args.bootstrap and args.seed < 0:
        parser.error(f"--seed must be >= 0 (numpy's generator takes no negative seed), got "
                     f"{args.seed}")


# ----------------------------------------------------------------------------------------------
# Prepare


def preprocess_id(frames, placement, device):
    """The cache key's preprocessing: the operations, and where they run (a GPU's bicubic
    kernels can differ from the CPU's in the last bits)."""
    runs_on = device.type if placement == "device" else "cpu"
    return f"{frames.describe()}; computed on {runs_on}"


def decoder_report(decoder, decode_on, decoded):
    """The report's decoder entry: asked for, chosen, and the videos that auto read with PyAV
    because decord failed on them (each one's reason is in the manifest, "fallback")."""
    return {"requested": decoder, "chosen": resolve_decoder(decoder), "decode_on": decode_on,
            "fallback_videos": sorted(v for v, info in decoded.items() if "fallback" in info)}


def check_decode_failures(skipped, skip_bad_videos, cache_file=None):
    """The one rule for videos that failed to decode: they stop the run unless skip_bad_videos.

    skipped: [[video_id, reason]]; cache_file: the cache entry they were read from, if any.
    """
    if not skipped or skip_bad_videos:
        return
    video_id, reason = skipped[0]
    source = "" if cache_file is None else (f" (as recorded in the embedding cache {cache_file}; "
                                            "pass --no_cache to decode them again)")
    raise VideoDecodeError(f"{len(skipped)} video(s) failed to decode, e.g. {video_id}: "
                           f"{reason}{source}; pass --skip_bad_videos to leave them out")


# ----------------------------------------------------------------------------------------------
# Evaluate


def evaluate(content, temperatures, device=torch.device("cpu"), protocol=None):
    """Metrics per aggregation over the kept videos and their queries.

    protocol: the dataset's registry entry (clip_hitchhiker.datasets.DatasetEntry), which
    says how videos rank texts (v2t), how the t2v median is taken and the classification
    metric; None: MSR-VTT's (and Charades' mAP for classification content).
    The similarities and the ranking run on device (the same code on any device); the metrics
    are exact comparisons, so ties and tie policies behave the same everywhere. An aggregation
    that fails (ValueError) is reported in its entry ("error") and the others still run.
    returns: list of {"aggregation", "temperature", "t2v", "v2t", "t2v_tied_queries", "ranks"}
    (plus "t2v_averaging" when over 1 % of queries tie); mean pooling first. "ranks" holds
    numpy arrays: take it out before writing JSON.
    """
    if content.get("task") == "classification":
        return evaluate_classification(content, temperatures, device,
                                       "mAP" if protocol is None else protocol.metric)
    v2t, median = ("captions", "average") if protocol is None else (protocol.v2t,
                                                                    protocol.t2v_median)
    position = {v: i for i, v in enumerate(content["video_ids"])}
    keep = [i for i, v in enumerate(content["query_video_ids"]) if v in position]
    query_to_video = torch.tensor([position[content["query_video_ids"][i]] for i in keep],
                                  dtype=torch.long, device=device)
    text = content["text_embeds"][keep].to(device)
    return _each_aggregation(text, content["video_embeds"].to(device), temperatures,
                             lambda sims: _score(sims, query_to_video, v2t, median))


def evaluate_classification(content, temperatures, device=torch.device("cpu"), metric="mAP"):
    """Zero-shot classification: the classes' text embeddings score every kept video, by mean
    pooling and by query-scoring. metric: "mAP" (Charades') or "accuracy" (top-1, top-5 and
    mean class accuracy, Kinetics').
    returns: list of {"aggregation", "temperature", "mAP", "per_class_AP": {class name: AP or
    None (no positive video)}} or {..., "top1", "top5", "mean_class_accuracy",
    "per_class_accuracy": {class name: accuracy or None (no video)}}; mean pooling first."""
    text = content["text_embeds"].to(device)  # [C, D], one per class
    labels = torch.zeros(len(content["video_ids"]), len(text), dtype=torch.bool)
    for row, video_id in enumerate(content["video_ids"]):
        labels[row, content["labels"][video_id]] = True

    def per_class(name, values):
        return {name: {c: None if np.isnan(v) else float(v)
                       for c, v in zip(content["captions"], values)}}

    def score(sims):
        if metric == "accuracy":
            accuracy, by_class = kinetics_accuracy(sims, labels.to(torch.uint8).argmax(1))
            return {**accuracy, **per_class("per_class_accuracy", by_class)}
        mean_ap, by_class = charades_map(sims, labels)
        return {"mAP": mean_ap, **per_class("per_class_AP", by_class)}

    return _each_aggregation(text, content["video_embeds"].to(device), temperatures, score)


def _each_aggregation(text, video, temperatures, score):
    """Mean pooling, then query-scoring at each temperature, each scored by score(sims); one
    that fails (ValueError) is reported in its entry ("error") and the others still run.
    returns: list of {"aggregation", "temperature", ...score's entries}."""
    aggregations = [("mean-pooling", None, lambda: similarity_meanpooling(text, video))]
    aggregations += [("query-scoring", t, lambda t=t: similarity_queryscoring(text, video, t))
                     for t in temperatures]
    results = []
    for name, temperature, similarity in aggregations:
        result = {"aggregation": name, "temperature": temperature}
        try:
            result.update(score(similarity()))
        except ValueError as e:
            result["error"] = str(e)
        results.append(result)
    return results


def _score(sims, query_to_video, v2t="captions", median="average"):
    """t2v and v2t metrics of one similarity matrix, their per-query ranks ("ranks", for the
    bootstrap), and how many queries tie (one pass over the matrix gives both tie policies).
    v2t, median: the dataset's protocol (clip_hitchhiker.datasets.V2T_PROTOCOLS, MEDIANS)."""
    num_higher, num_tied = t2v_rank_counts(sims, query_to_video=query_to_video)
    video_ranks = v2t_ranks if v2t == "captions" else v2t_group_ranks
    ranks = {"t2v": ranks_from_counts(num_higher, num_tied),
             "v2t": video_ranks(sims, query_to_video=query_to_video)}
    scores = {"t2v": ranks_to_metrics(ranks["t2v"], median),
              "v2t": ranks_to_metrics(ranks["v2t"]),
              "t2v_tied_queries": int((num_tied > 1).sum()), "ranks": ranks}
    if scores["t2v_tied_queries"] > TIE_WARNING_FRACTION * len(query_to_video):
        scores["t2v_averaging"] = ranks_to_metrics(ranks_from_counts(num_higher, num_tied,
                                                                     "averaging"), median)
    return scores


# ----------------------------------------------------------------------------------------------
# Main


def main(args):
    """Run the evaluation. returns: the report dict on rank 0 (None on other ranks)."""
    if args.list_models:
        print("\n".join(list_models()))
        return None
    start = time.perf_counter()
    with process_group(args.device, args.dist_timeout) as ctx:
        if is_moment_run(args):
            return run_moments(args, ctx, start, check_decode_failures=check_decode_failures,
                               preprocess_id=preprocess_id)
        if args.suite is not None:
            return _run_suite(args, ctx)
        return _run(args, ctx, start)


def _prepare(args, ctx, download, loaded=None):
    """The model (loaded, or taken from loaded["model"] and kept there), its preprocessing and
    the dataset."""
    model = (loaded or {}).get("model") or load_model(args.backend, args.model, ctx.device,
                                                      args.pretrained, args.download_root)
    if loaded is not None:
        loaded["model"] = model
    frame_preprocess = FramePreprocess(model.preprocess, frame_dtype_for(model.dtype),
                                       antialias=args.antialias)
    placement = resolve_preprocess_on(args.preprocess_on, ctx.device)
    urls = {key: getattr(args, f"{key}_url") for key in default_urls()}
    dataset, dataset_id = build_dataset(
        frame_preprocess if placement == "workers" else None, args.num_frames,
        dataset=args.dataset, split=args.split, csv=args.csv, video_root=args.video_root,
        data_root=args.data_root, urls=urls, prompts=args.prompt,
        paragraph=args.paragraph, check_files=not args.skip_bad_videos, download=download,
        decoder=args.decoder, decode_device=decode_device(args.decode_on, ctx.device))
    return model, dataset, dataset_id, frame_preprocess, placement


def _check_outputs(args, dataset, cache_file):
    """Before any decoding: outputs writable and no input overwritten (the cache entry this run
    reads is one), matplotlib there for a plot, the earlier report readable.
    returns: (whether the cache can be written, the earlier report or None)."""
    inputs = [p for p in (args.csv, args.model, args.compare) if p and os.path.isfile(p)]
    inputs += [] if args.no_cache else [cache_file]  # read now, or written after the metrics
    check_output_files({"--output_json": args.output_json, "--plot": args.plot,
                        "--save_embeddings": args.save_embeddings}, inputs + dataset.video_paths,
                       dataset_folders(args.dataset, args.data_root))
    if args.plot:
        require_matplotlib()
    earlier = read_report(args.compare) if args.compare else None
    return not args.no_cache and cache_is_writable(args.cache_dir), earlier


def read_report(path):
    """An earlier --output_json report, for --compare."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--compare {path} is not a readable JSON report ({e})") from e
    if not isinstance(report, dict) or not {"results", "config", "manifest"} & set(report):
        raise ConfigError(f"--compare {path} is not a report written by --output_json (it has "
                          "none of results, config, manifest)")
    return report


def _run(args, ctx, start, loaded=None):
    """One dataset's run; loaded: {"model": ...} to share a model between runs (the suite)."""
    check_decoder(args.decoder, args.decode_on)
    if ctx.is_main:
        print(decoder_line(args.decoder, args.decode_on), file=sys.stderr)  # stdout: results
    # Local rank 0 downloads weights and data first; the others then read them. A suite run
    # downloads no data: it runs what is on disk and lists the rest.
    first = collective_step(ctx, lambda: _prepare(args, ctx, args.suite is None, loaded)
                            if ctx.local_rank == 0 else None)
    model, dataset, dataset_id, frame_preprocess, placement = collective_step(
        ctx, lambda: first if ctx.local_rank == 0 else _prepare(args, ctx, False, loaded))
    decoded_by = f"; decoded by {decoder_id(args.decoder, args.decode_on)}"
    key = embedding_cache.cache_key(model.model_id, model.dtype, args.num_frames, dataset_id,
                                    preprocess_id(frame_preprocess, placement, ctx.device)
                                    + decoded_by)
    path = embedding_cache.cache_path(args.cache_dir, key)
    write_cache, earlier = collective_step(ctx, lambda: _check_outputs(args, dataset, path)
                                           if ctx.is_main else (False, None))
    entry = get_entry(args.dataset)
    if ctx.is_main:
        _report_split(args.dataset, args.split or entry.default_split(), dataset,
                      args.video_root)
    loaded_at = time.perf_counter()
    content, cache_hit, decoded = _embed(args, ctx, model, dataset, key, path,
                                         frame_preprocess if placement == "device" else None)
    encode_seconds = time.perf_counter() - loaded_at
    if not ctx.is_main:
        return None

    if cache_hit:
        print(f"video embeddings loaded from cache {path} (no video decoded)")
    else:
        videos, frames = len(content["video_ids"]), len(content["video_ids"]) * args.num_frames
        print(f"encoded {videos} videos ({frames} frames) in {encode_seconds:.1f} s: "
              f"{videos / encode_seconds:.2f} videos/s, {frames / encode_seconds:.1f} frames/s")
    # The texts the model encoded: prompts filled with class names, or a paragraph's sentences.
    truncated = model.count_truncated(list(dict.fromkeys(dataset.text_rows()[0])))
    if truncated:
        print(f"note: {truncated} caption(s) are longer than the model's "
              f"{model.context_length}-token context and were cut to it", file=sys.stderr)
    note, counts = partial_note(content)
    counts.update(classification_counts(content))
    counts["videos_shorter_than_num_frames"] = report_short_videos(content, args.num_frames)
    for video_id, reason in content["skipped"]:
        print(f"skipped {video_id}: {reason}", file=sys.stderr)
    similarity_start = time.perf_counter()
    results = evaluate(content, args.query_scoring_temp, ctx.device, entry)
    similarity_seconds = time.perf_counter() - similarity_start
    print_results(results, note, counts["queries"])
    rank_sets = {result_label(r): r.pop("ranks") for r in results if "ranks" in r}
    intervals = _bootstrap(args, rank_sets, counts["queries"], entry.t2v_median) \
        if args.bootstrap else None
    published = _published(args, results, model.model_id, bool(content["skipped"]))
    report = {
        "config": vars(args), "versions": package_versions(), "device": str(ctx.device),
        "world_size": ctx.world_size, "results": results, "model": model.info,
        "preprocess": {"on": placement, "antialias": args.antialias,
                       "description": frame_preprocess.describe()},
        "counts": {**counts, "decoded_videos": decoded, "truncated_captions": truncated,
                   "skipped": content["skipped"]},
        "decoder": decoder_report(args.decoder, args.decode_on, content["decoded"]),
        "bootstrap": intervals, "published": published, "manifest": run_manifest(content),
        "cache": {"hit": cache_hit, "path": None if args.no_cache else str(path)},
        "timings_s": {"load": loaded_at - start, "encode": encode_seconds,
                      "similarity_and_metrics": similarity_seconds,
                      "total": time.perf_counter() - start},
    }
    _write_outputs(args, content, key, path, write_cache and not cache_hit, report)
    if earlier is not None:  # after the outputs: nothing in an old report can lose them
        print("\n".join(compare_reports(earlier, report, args.compare)))
    return report


def _report_split(dataset_name, split, dataset, video_root):
    """Before decoding, on stderr: a split whose counts differ from the official files', and
    the videos missing from the user's folder (left out, the result marked partial)."""
    note = count_difference(dataset_name, split, len(dataset), len(dataset.queries))
    if note:
        print(note, file=sys.stderr)
    if getattr(dataset, "missing", None):
        print(f"{len(dataset.missing)} of {len(dataset)} videos are missing from "
              f"{getattr(dataset, 'video_root', None) or video_root}, e.g. "
              f"{dataset.missing[:3]}; they are left out and the result is marked partial",
              file=sys.stderr)


def _run_suite(args, ctx):
    """Every dataset of --suite whose data is on disk, one after the other with one model;
    then the table. A dataset that fails is listed as failed and the others still run (in one
    process; under torchrun the first failure stops the suite).
    returns: the table's JSON on rank 0 (None on other ranks)."""
    names = args.suite or suite_names()
    video_roots = {n: resolve_video_root(n, None, args.data_root) for n in names}
    paths = {suffix: f"{args.table}{suffix}" for suffix in TABLE_SUFFIXES}
    if ctx.is_main:
        folders = [f for n in registry() if n != "csv" for f in dataset_folders(n, args.data_root)]
        check_output_files({f"--table ({suffix})": path for suffix, path in paths.items()}, [],
                           folders)
    loaded, rows, not_run = {}, [], []
    for name, missing in suite_plan(names, args.data_root, video_roots):
        if missing:
            not_run.append({"dataset": name, "status": "not run", "reason": missing})
            continue
        if ctx.is_main:
            print(f"== {name} ==")
        try:
            report = _run(_suite_args(args, name), ctx, time.perf_counter(), loaded)
        except HitchhikerError as e:
            if ctx.world_size > 1 or isinstance(e, PeerFailure):
                raise
            print(f"error: {name}: {e}", file=sys.stderr)
            not_run.append({"dataset": name, "status": "failed", "reason": str(e)})
            continue
        if ctx.is_main:
            rows += suite_rows(name, report)
    return _write_table(args, paths, rows, not_run) if ctx.is_main else None


def _write_table(args, paths, rows, not_run):
    """The suite's table, printed in Markdown and written as PREFIX.md, .csv and .json (each
    atomically). returns: the JSON's content."""
    settings = (f"{args.backend} {args.model}, {args.num_frames} frames, query-scoring τ "
                f"{', '.join(f'{t:g}' for t in args.query_scoring_temp)}"
                + (f", {args.bootstrap} bootstrap resamples (seed {args.seed}), 95% intervals"
                   if args.bootstrap else ""))
    table = {"settings": settings, "config": vars(args), "versions": package_versions(),
             "results": rows, "not_run": not_run}
    markdown = markdown_table(rows, not_run, settings)
    try:
        embedding_cache.write_atomically(paths[".md"], lambda t: Path(t).write_text(markdown))
        embedding_cache.write_atomically(paths[".csv"],
                                         lambda t: Path(t).write_text(csv_table(rows, not_run)))
        embedding_cache.write_json(paths[".json"], table)
    except OSError as e:
        raise OutputError(f"the suite ran, but its table could not be written: {e}") from e
    print("\n" + markdown + f"\ntable written to {', '.join(paths.values())}")
    return table


def _suite_args(args, name):
    """The arguments of one dataset's run in the suite: its default split and folders, the
    suite's model, frames and temperatures, and no per-run output file."""
    entry = get_entry(name)
    classification = entry.task == "classification"
    return argparse.Namespace(**{
        **vars(args), "dataset": name, "split": None, "video_root": None, "csv": None,
        "output_json": None, "save_embeddings": None, "plot": None, "compare": None,
        "prompt": args.prompt if classification else None,
        "bootstrap": 0 if classification else args.bootstrap})


def classification_counts(content):
    """For classification, how many of the scored videos carry no label ({} otherwise); they
    are printed as a note, and left out of every class's ranking as the official mAP does."""
    if content.get("task") != "classification":
        return {}
    unlabelled = sum(not content["labels"][v] for v in content["video_ids"])
    if unlabelled:
        print(f"note: {unlabelled} of {len(content['video_ids'])} test videos have no action "
              "label; as Charades' official evaluation does, they are not ranked",
              file=sys.stderr)
    return {"unlabelled_videos": unlabelled}


def _bootstrap(args, rank_sets, num_queries, t2v_median="average"):
    """Intervals and paired differences from mean pooling; one line per aggregation."""
    intervals = bootstrap(rank_sets, args.bootstrap, args.seed, baseline="mean-pooling",
                          t2v_median=t2v_median)
    for label in rank_sets:
        print(format_bootstrap_line(label, intervals, num_queries))
    return intervals


def _published(args, results, model_id, partial):
    """The paper's figures and this run's differences from them, for the release's setting
    only (None otherwise)."""
    if not is_release_configuration(dataset=args.dataset, split=args.split, model_id=model_id,
                                    backend=args.backend,
                                    num_frames=args.num_frames, antialias=args.antialias,
                                    temperatures=args.query_scoring_temp, partial=partial):
        return None
    comparison = published_comparison(results)
    print_published(comparison)
    return comparison


def _embed(args, ctx, model, dataset, key, path, device_preprocess):
    """The embeddings from the cache, or computed (sharded across ranks); on rank 0 checked:
    decode failures, at least one video, no broken embeddings.
    returns: (content, cache hit, videos decoded by this rank)."""
    cached = None if args.no_cache or not ctx.is_main else \
        embedding_cache.load_cached_embeddings(path, key)
    cache_hit = broadcast_json(ctx, cached is not None)
    if cache_hit:  # the videos' embeddings; the texts are this run's (prompts, paragraph mode)
        with torch.inference_mode():
            texts = compute_text_fields(model, dataset, ctx)
        content, decoded = (None if cached is None else {**cached, **texts}), 0
    else:
        collective_step(ctx, lambda: _check_memory(args, dataset, device_preprocess)
                        if ctx.is_main else None)
        with torch.inference_mode():
            content, decoded = compute_embeddings(
                model, dataset, ctx, batch_size=args.batch_size,
                num_workers=loader_workers(args.num_workers, args.decode_on),
                frame_chunk=args.frame_chunk, device_preprocess=device_preprocess,
                on_failures=lambda failed: check_decode_failures(failed, args.skip_bad_videos))
    if ctx.is_main:
        check_decode_failures(content["skipped"], args.skip_bad_videos,
                              path if cache_hit else None)
        check_some_decoded(content)
        check_embeddings(content["text_embeds"], content["video_embeds"], args.model)
    return content, cache_hit, decoded


def _check_memory(args, dataset, device_preprocess):
    """Before decoding: refuse settings whose batches cannot fit in this machine's memory
    (every rank on it decodes at once), from the first videos' resolution."""
    resolution = largest_resolution(dataset.video_paths)
    if resolution is None:
        return
    workers_preprocess = device_preprocess is None
    settings = dict(batch_size=args.batch_size, num_frames=args.num_frames,
                    num_workers=args.num_workers)
    needed = decoding_memory_bytes(
        **settings, height=resolution[0], width=resolution[1],
        prefetch=prefetch_factor(max(1, args.num_workers), args.batch_size, args.num_frames,
                                 args.frame_chunk),
        crop=dataset.preprocess.crop if workers_preprocess else None,
        itemsize=dataset.preprocess.dtype.itemsize if workers_preprocess else 1)
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    check_decoding_memory(needed * local_ranks, available_memory_bytes(), **settings,
                          resolution=resolution)


def report_short_videos(content, num_frames):
    """One note for all the videos with fewer frames than asked (their frames repeat).
    returns: how many."""
    short = {v: info["frames"] for v, info in content["decoded"].items()
             if isinstance(info.get("frames"), int) and info["frames"] < num_frames}
    if short:
        video_id, frames = next(iter(short.items()))
        print(f"note: {len(short)} of {len(content['decoded'])} videos have fewer frames than "
              f"--num_frames {num_frames} (e.g. {video_id}: {frames}); their frames repeat",
              file=sys.stderr)
    return len(short)


def check_some_decoded(content):
    """No video decoded at all (every one skipped) is an error, with the first reasons."""
    if content["video_ids"]:
        return
    if not content["skipped"]:
        raise DatasetError("the dataset lists no video: the split is empty")
    reasons = "; ".join(f"{video_id}: {reason}" for video_id, reason in content["skipped"][:3])
    raise VideoDecodeError(f"no video could be decoded ({len(content['skipped'])} tried), e.g. "
                           f"{reasons}")


def _write_outputs(args, content, key, path, write_cache, report):
    """After the metrics are printed: the cache (a failure only warns), then the user's files."""
    plot = [lambda: save_figure(temperature_figure(report["results"], report["bootstrap"]),
                                args.plot)] if args.plot else []
    embedding_cache.write_run_outputs(
        content, key, report, cache_file=path if write_cache else None,
        embeddings_file=args.save_embeddings, report_file=args.output_json, more=plot)


def cli(argv=None):
    """The command line: the project's own errors become one line on stderr and exit code 1;
    a failed aggregation also exits 1, after the others have printed."""
    silence_third_party_notices()
    args = parse_args(argv)
    try:
        report = main(args)
    except KeyboardInterrupt:
        print(interruption_note(args.data_root), file=sys.stderr)
        sys.exit(130)
    except PeerFailure as e:
        if int(os.environ.get("RANK", "0")) == 0:  # other ranks stay quiet: the cause is printed
            print(f"error: {e}", file=sys.stderr)  # by the rank that failed and by rank 0
        sys.exit(1)
    except HitchhikerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if report is not None and (any("error" in r for r in report["results"]) or any(
            item["status"] == "failed" for item in report.get("not_run", ()))):
        sys.exit(1)


if __name__ == "__main__":
    cli()
