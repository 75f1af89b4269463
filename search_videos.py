"""Search your own videos by text, and get the moment: an incremental, crash-safe index of CLIP
frame embeddings, searched by query-scoring (Bain et al., arXiv 2205.08508).

    python search_videos.py index ~/videos --index my_index
    python search_videos.py search --index my_index "a dog catches a frisbee" -k 5
    python search_videos.py info --index my_index --verify

Stages of `index`: parse -> prepare (model, writer, which videos are new, changed or gone) ->
decode and encode, committing every --commit_every videos -> report. Only parse_args, main and
cli read the argparse namespace. The format: clip_hitchhiker/search/index_format.py, docs/search.md.
"""
import argparse
import itertools
import json
import locale
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from clip_hitchhiker.search import candidate_index
from clip_hitchhiker.search import index_writer as writer_lib
from clip_hitchhiker.search import video_listing
from clip_hitchhiker.search.candidate_index import STAGE1_TYPES
from clip_hitchhiker.errors import (ConfigError, HitchhikerError, PeerFailure, VideoDecodeError,
                                    VideoIndexError)
from clip_hitchhiker.models.options import (DEVICE_PATTERN, add_encoding_arguments,
                                           add_model_arguments, check_model_arguments,
                                           decode_device, loader_workers, resolve_preprocess_on)
from clip_hitchhiker.moments.rule import DEFAULT_MASS
from clip_hitchhiker.reporting import silence_third_party_notices
from clip_hitchhiker.torchrun import (all_gather_json, broadcast_json, collective_step,
                                      explicit_device, process_group, shard)
from clip_hitchhiker.video.decoders import check_decoder, decoder_log, resolve_decoder
from clip_hitchhiker.search.index_model import index_run_model
from clip_hitchhiker.search.queries import check_queries
from clip_hitchhiker.search.thumbnails import ThumbnailFolder, hit_frame
from clip_hitchhiker.search.video_index import AGGREGATES, VideoIndex
from clip_hitchhiker.search import index_format as fmt
from clip_hitchhiker.search.search_report import rounded_for_print, search_report

DEFAULT_COMMIT_EVERY = 100
# serve's token from the environment: unlike --token, not shown to other users by ps.
TOKEN_ENV = "CLIP_HITCHHIKER_TOKEN"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Index your videos with CLIP, then search "
                                     "them by text with query-scoring and get the moment.")
    commands = parser.add_subparsers(dest="command", required=True)
    _index_parser(commands.add_parser("index", help="add new or changed videos to an index"))
    _search_parser(commands.add_parser("search", help="search an index by text or image"))
    _serve_parser(commands.add_parser("serve", help="a local search page over an index"))
    info = commands.add_parser("info", help="describe an index")
    info.add_argument("--index", required=True, metavar="DIR")
    info.add_argument("--json", action="store_true",
                      help="print JSON (seconds to the millisecond)")
    info.add_argument("--times", action="store_true",
                      help="also list every video's frame times (in the JSON too)")
    info.add_argument("--verify", action="store_true",
                      help="also check every file's sha256 against the manifest")
    args = parser.parse_args(argv)
    if args.command == "index":
        check_model_arguments(parser, args)
        _check_sampling(parser, args)
    if args.command == "search":
        _check_search(parser, args)
    if args.command == "serve":
        _check_serve(parser, args)
    return args


def _index_parser(parser):
    add = parser.add_argument
    add("paths", nargs="+", metavar="PATH",
        help="video files, folders (searched recursively) or lists (.txt/.csv) of videos")
    add("--index", required=True, metavar="DIR", help="the index folder (made if missing)")
    add("--fps", type=float, default=None,
        help="frames per second: the frame nearest the middle of each 1/F-second segment "
             "(default 1)")
    add("--max_frames", type=int, default=None,
        help="at most N frames per video: longer videos are covered evenly at a lower rate")
    add("--num_frames", type=int, default=None,
        help="instead of --fps: N frames per video by the paper's uniform rule, as "
             "run_msr_retrieval.py samples")
    add("--keyframes", action="store_true",
        help="with --fps: the key frame nearest each segment's middle, decoding key frames "
             "only (an approximate rule, many times faster on long videos; each frame keeps "
             "its true time). Fastest with --decoder pyav")
    add("--prune", action="store_true",
        help="drop the indexed videos under the PATHs named whose files are gone (refused when "
             "a named folder is missing or holds no video, or when it would drop more than "
             "half of the index, unless --confirm_prune)")
    add("--confirm_prune", action="store_true",
        help="with --prune: prune even a missing or empty named folder, or most of the index")
    add("--stage1", choices=STAGE1_TYPES, default=None,
        help="the FAISS candidate index over segment means: auto (flat up to 200k vectors, "
             "IVF-SQ8 up to 1M, then IVF-PQ), flat, ivfsq8, ivfpq or hnsw (default: what the "
             "index has, auto for a new one)")
    add("--commit_every", type=int, default=DEFAULT_COMMIT_EVERY, metavar="N",
        help="commit after every N videos (per rank under torchrun): a kill loses at most "
             f"those (default {DEFAULT_COMMIT_EVERY})")
    add_model_arguments(parser, index_defaults=True)
    add_encoding_arguments(parser)


def _search_parser(parser):
    add = parser.add_argument
    add("queries", nargs="*", metavar="QUERY", help="texts to search for")
    add("--index", required=True, metavar="DIR")
    add("--queries", dest="queries_file", default=None, metavar="FILE",
        help="a file with one query per line (added to the QUERYs)")
    add("-k", type=int, default=10, help="hits per query (default 10)")
    add("--temperature", type=float, default=0.1,
        help="query-scoring softmax temperature (default 0.1)")
    add("--aggregate", choices=AGGREGATES, default="queryscoring",
        help="queryscoring (default) or mean pooling of the frames; the moment always comes "
             "from the query-scoring frame weights")
    add("--exact", action="store_true",
        help="score every video exactly (no FAISS candidates): the ground truth, slower")
    add("--candidates", type=int, default=None,
        help="videos that stage 1 proposes per query, exactly (default: "
             f"{candidate_index.MIN_CANDIDATES}, or one in {candidate_index.CANDIDATE_SHARE} "
             "of the index's videos when that is more, grown 1.5 times over, up to 16 times "
             "the start, while the newest third of them may still hold a top-k video)")
    add("--nprobe", type=int, default=None,
        help="inverted lists an IVF stage 1 probes (default: the number the index recorded "
             "when it was built, more for a deep ask; an ivfsq8 index built before 6 Dec 2026 "
             "recorded 8, where 4 is as good and faster)")
    add("--mass", type=float, default=DEFAULT_MASS,
        help=f"share of the frame weight the moment holds (default {DEFAULT_MASS})")
    add("--json", action="store_true",
        help="print JSON (seconds to the millisecond, scores to 6 decimals)")
    add("--thumbnails", default=None, metavar="DIR",
        help="write each hit's peak frame as DIR/q<query>_r<rank>.jpg, after the results; "
             "search replaces only the thumbnails it wrote there, and refuses to start if a "
             "file it did not write has one of those names")
    add("--image", action="append", default=[], metavar="PATH",
        help="search with an image (its CLIP embedding is the query); repeatable")
    add("--clips", default=None, metavar="DIR",
        help="write each hit's moment as an MP4 in DIR (stream copy from the key frame before "
             "the start where the codec allows, else re-encoded); never replaces a file")
    add("--device", default="cpu", help="where the text model runs: cpu (default), cuda, cuda:N")
    add("--model", default=None, metavar="FILE",
        help="the index's weights file where it is now, if it moved (a clip checkpoint, or an "
             "open_clip index's --pretrained file); it must have the sha256 the index records")


def _serve_parser(parser):
    add = parser.add_argument
    add("--index", required=True, metavar="DIR")
    add("--host", default="127.0.0.1",
        help="the address to listen on (default 127.0.0.1: this machine only); any other needs "
             "a token, generated when --token is not given")
    add("--port", type=int, default=8765, help="default 8765")
    add("--token", default=None,
        help="every request must carry it (the printed URL does); required off 127.0.0.1. "
             f"Safer: set ${TOKEN_ENV} instead (a command line is visible to others in ps)")
    add("--cache", default=None, metavar="DIR",
        help="where clips of the moments are kept (default $XDG_CACHE_HOME or "
             "~/.cache/clip-hitchhiker/clips; the index itself is never written)")
    add("--cache_max_mb", type=float, default=2048, metavar="MB",
        help="the most the clips in --cache may take, in MB (10^6 bytes; default 2048): past "
             "it, the least recently used clips the server made are removed")
    add("--device", default="cpu", help="where the model runs: cpu (default), cuda, cuda:N")


def _check_sampling(parser, args):
    if args.num_frames is not None and (args.fps is not None or args.max_frames is not None):
        parser.error("--num_frames is the paper's uniform rule; it takes no --fps or "
                     "--max_frames")
    if args.num_frames is not None and args.keyframes:
        parser.error("--keyframes samples by time (--fps); it takes no --num_frames")
    if args.num_frames is not None and args.num_frames < 1:
        parser.error(f"--num_frames must be >= 1, got {args.num_frames}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        parser.error(f"--fps must be a number > 0, got {args.fps}")
    if args.max_frames is not None and args.max_frames < 1:
        parser.error(f"--max_frames must be >= 1, got {args.max_frames}")
    if args.commit_every < 1:
        parser.error(f"--commit_every must be >= 1, got {args.commit_every}")
    if args.confirm_prune and not args.prune:
        parser.error("--confirm_prune confirms a --prune; give --prune with it")


def _check_search(parser, args):
    if args.k < 1:
        parser.error(f"-k must be >= 1, got {args.k}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        parser.error(f"--temperature must be a number > 0, got {args.temperature}")
    if not 0 < args.mass <= 1:
        parser.error(f"--mass must be in (0, 1], got {args.mass}")
    if args.candidates is not None and args.candidates < 1:
        parser.error(f"--candidates must be >= 1, got {args.candidates}")
    if args.nprobe is not None and args.nprobe < 1:
        parser.error(f"--nprobe must be >= 1, got {args.nprobe}")
    if not DEVICE_PATTERN.fullmatch(args.device) or args.device == "auto":
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if not args.queries and not args.queries_file and not args.image:
        parser.error("give at least one QUERY, --queries FILE or --image PATH")


def _check_serve(parser, args):
    if not 1 <= args.port <= 65535:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    if not DEVICE_PATTERN.fullmatch(args.device) or args.device == "auto":
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.token is not None and len(args.token) < 8:
        parser.error("--token must have at least 8 characters")
    if args.token is None and os.environ.get(TOKEN_ENV):  # --token, if given, wins
        args.token = os.environ[TOKEN_ENV]
        if len(args.token) < 8:
            parser.error(f"${TOKEN_ENV} must have at least 8 characters")
    if not (math.isfinite(args.cache_max_mb) and args.cache_max_mb >= 0):
        parser.error(f"--cache_max_mb must be a number >= 0, got {args.cache_max_mb}")


def sampling_of(args):
    """The sampling rule as the manifest records it."""
    if args.num_frames is not None:
        return {"rule": "uniform", "num_frames": args.num_frames}
    sampling = {"rule": "fps", "fps": args.fps or 1.0, "max_frames": args.max_frames}
    # Only when given, so that indexes made before the option existed keep their sampling.
    return {**sampling, "keyframes": True} if args.keyframes else sampling


# ----------------------------------------------------------------------------------------------
# index


class VideoFiles(torch.utils.data.Dataset):
    """Decodes (and, in the workers, preprocesses) each video: {"index", "frames", "info",
    "error", "vanished"} with "error" the decode failure's message ("" when decoded) and
    "vanished" True when it failed because the file is gone. What the decoder prints goes into
    the message, not to the terminal."""

    def __init__(self, paths, sampling, preprocess, decoder, decode_device):
        self.paths, self.sampling, self.preprocess = paths, sampling, preprocess
        self.decoder, self.decode_device = decoder, decode_device

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path, error = self.paths[index], None
        with decoder_log() as log:
            try:
                frames, info = decode_video(path, self.sampling, self.decoder,
                                            self.decode_device)
            except VideoDecodeError as e:
                error = e
        if error is not None:
            printed = f" (the decoder printed: {'; '.join(log)[:300]})" if log else ""
            return {"index": index, "frames": None, "info": None, "error": f"{error}{printed}",
                    "vanished": not os.path.exists(path)}
        if self.preprocess is not None:
            frames = self.preprocess(frames)
        return {"index": index, "frames": frames, "info": info, "error": "", "vanished": False}


def decode_video(path, sampling, decoder, device="cpu"):
    """(uint8 frames [F, 3, H, W], info with "times", "indices", "duration") by the sampling
    rule; the uniform rule's times are the sampled frames' presentation times, in seconds from
    the first frame as the time-based rule gives them (a stream that starts at 1.4 s, as MPEG-TS
    does, would otherwise put every moment 1.4 s late, past the end for the last frames)."""
    from clip_hitchhiker.video.decoders import frame_table
    from data_loader import read_video

    if sampling["rule"] == "fps":
        return read_video(path, fps=sampling["fps"], max_frames=sampling["max_frames"],
                          keyframes=sampling.get("keyframes", False), decoder=decoder,
                          device=device)
    frames, info = read_video(path, sampling["num_frames"], decoder=decoder, device=device)
    try:
        table = frame_table(path)
    except Exception as e:  # the container's own errors
        raise VideoDecodeError(f"cannot read the frame times of {path}: {e}") from e
    times = [float(table.times[i]) - table.start for i in info["indices"]]
    return frames, {**info, "times": times, "duration": float(table.duration)}


def _collate(items):
    return items


def run_index(args):
    """Add the new and changed videos of args.paths to the index; under torchrun, each rank
    encodes its share and rank 0 commits. returns: a summary dict (rank 0; None elsewhere)."""
    with process_group(args.device) as ctx:
        return _run_index(args, ctx)


def _run_index(args, ctx):
    from clip_hitchhiker.models.backends import load_model
    from clip_hitchhiker.models.clip_models import frame_dtype_for
    from data_loader import FramePreprocess

    check_decoder(args.decoder, args.decode_on)
    listing = _listing(args, ctx)
    manifest = fmt.read_manifest(args.index)
    backend, model_name, pretrained, model_id = index_run_model(
        args.index, manifest and manifest["config"], args.backend, args.model, args.pretrained)
    model = collective_step(ctx, lambda: load_model(backend, model_name, ctx.device, pretrained,
                                                    args.download_root))
    preprocess = FramePreprocess(model.preprocess, frame_dtype_for(model.dtype),
                                 antialias=args.antialias)
    sampling = sampling_of(args)
    config = {"backend": backend, "model": _model_reference(model_name),
              "pretrained": pretrained and _model_reference(pretrained),
              "model_id": model_id or model.model_id,
              "embed_dim": model.embed_dim, "preprocess": preprocess.describe(),
              "sampling": sampling, "decoder": resolve_decoder(args.decoder)}
    writer = collective_step(ctx, lambda: writer_lib.IndexWriter(args.index, config, args.stage1)
                             if ctx.is_main else None)
    stage1_before = writer.manifest["stage1"]["type"] if writer and writer.manifest else None
    try:
        plan = broadcast_json(ctx, collective_step(ctx, lambda: _plan(writer, listing, args)
                                                   if ctx.is_main else None))
        summary = encode_and_commit(writer, model, plan, sampling, preprocess, ctx, args)
    finally:
        if writer is not None:
            writer.close()
    if not ctx.is_main:
        return None
    return {**summary, "listed": len(listing.videos), "up_to_date": plan["up_to_date"],
            "moved": plan["moved"], "pruned": plan["pruned"],
            "failed": summary["failed"] + len(plan["failed"]) + len(plan["kept"]),
            "vanished": summary["vanished"] + len(plan["vanished"]),
            "videos": writer.manifest["videos"], "frames": writer.manifest["frames"],
            "stage1_before": stage1_before, "stage1": writer.manifest["stage1"]["type"]}


def _listing(args, ctx):
    """The videos args.paths name, after the checks that need no model: the --index folder,
    the listing's refusals; what was passed over is reported (rank 0)."""
    collective_step(ctx, lambda: _check_index_folder(args.index) if ctx.is_main else None)
    listing = video_listing.list_videos(args.paths)
    problem = video_listing.listing_problem(listing, args.prune, args.confirm_prune)
    if problem:
        raise ConfigError(problem)
    if ctx.is_main:
        for path, why in listing.skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        for path in listing.empty:
            print(f"warning: {path} holds no video", file=sys.stderr)
    return listing


def _check_index_folder(folder):
    problem = writer_lib.index_folder_problem(folder)
    if problem:
        raise VideoIndexError(problem)


def _plan(writer, listing, args):
    """What to encode, move, drop; the files that cannot be read or vanished are reported."""
    prune_under = video_listing.prune_scope(listing) if args.prune else None
    plan = writer.plan(listing.videos, prune_under, args.confirm_prune)
    for path, _, reason in plan["failed"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for path, reason in plan["kept"]:
        print(f"skipped {path}: {reason}; its entry from an earlier run is kept",
              file=sys.stderr)
    for path in plan["vanished"]:
        print(f"skipped {path}: {_VANISHED}", file=sys.stderr)
    return plan


_VANISHED = "it disappeared while being indexed (not recorded: it is indexed when it is back)"


def _model_reference(model):
    """A weights file by its absolute path (search loads it from any folder)."""
    return str(Path(model).resolve()) if os.path.isfile(model) else model


def encode_and_commit(writer, model, plan, sampling, preprocess, ctx, args):
    """Decode and encode this rank's share of plan["to_encode"] in rounds of args.commit_every
    videos per rank; after each round every rank writes its files and rank 0 commits them (the
    plan's renames, drops and unreadable files with the first). returns: this run's counts,
    summed over the ranks."""
    from data_loader import ignore_interrupts

    to_encode = plan["to_encode"]
    mine = [to_encode[i] for i in shard(len(to_encode), ctx)]
    placement = resolve_preprocess_on(args.preprocess_on, ctx.device)
    dataset = VideoFiles(mine, sampling, preprocess if placement == "workers" else None,
                         resolve_decoder(args.decoder), decode_device(args.decode_on, ctx.device))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                         num_workers=loader_workers(args.num_workers,
                                                                    args.decode_on),
                                         collate_fn=_collate, worker_init_fn=ignore_interrupts)
    items = (item for batch in loader for item in batch)
    counts = {"encoded": 0, "failed": 0, "vanished": 0, "frames_encoded": 0, "capped": 0}
    start = time.perf_counter()
    # Closed however the loop ends, so that an error's line starts a line of its own.
    with tqdm(total=len(mine), unit="video", desc="indexing", file=sys.stderr,
              disable=not (mine and ctx.is_main)) as bar:
        per_rank = math.ceil(len(to_encode) / ctx.world_size)
        for round_number in range(max(1, math.ceil(per_rank / args.commit_every))):
            encoded, failed = [], []
            for item in itertools.islice(items, args.commit_every):
                path = mine[item["index"]]
                if item["error"]:
                    failed += _failure(item, path, plan["found"][path], counts)
                else:
                    encoded.append(_encode(model, item, path, plan["found"][path], preprocess,
                                           placement, ctx.device, args.frame_chunk))
                    counts["encoded"] += 1
                    counts["frames_encoded"] += len(encoded[-1].frames)
                    counts["capped"] += _capped(item["info"], sampling)
                bar.update(1)
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{counts['encoded'] / elapsed:.2f} videos/s, "
                                    f"{counts['frames_encoded'] / elapsed:.1f} frames/s")
                writer_lib.test_pause("video")
            changes = _plan_changes(plan) if round_number == 0 else {}
            _commit_round(writer, args.index, encoded, failed, changes, ctx)
    totals = all_gather_json(ctx, counts)
    return {**{k: sum(c[k] for c in totals) for k in counts},
            "seconds": time.perf_counter() - start}


def _failure(item, path, found, counts):
    """Report a video that was not decoded. returns: [(path, fingerprint, reason)] to record,
    or [] for a file that vanished meanwhile (recorded, it would not be tried when it is back)."""
    if item["vanished"]:
        counts["vanished"] += 1
        tqdm.write(f"skipped {path}: {_VANISHED}", file=sys.stderr)
        return []
    counts["failed"] += 1
    tqdm.write(f"skipped {path}: {item['error']}", file=sys.stderr)
    return [(path, found, item["error"])]


def _plan_changes(plan):
    """What the plan commits without encoding: {"drop", "renamed", "failed"} (rank 0's)."""
    return {"drop": plan["drop"], "renamed": plan["renamed"], "failed": plan["failed"]}


def _commit_round(writer, folder, encoded, failed, changes, ctx):
    """Every rank writes its encoded videos' files; rank 0 commits them all (collectives, so a
    failure on any rank stops every rank). Nothing is written when there is nothing to commit."""
    wants = all_gather_json(ctx, {"encoded": bool(encoded), "failed": failed})
    failures = [tuple(f) for w in wants for f in w["failed"]]
    failures += [tuple(f) for f in changes.get("failed", [])]
    needed = broadcast_json(ctx, bool(
        any(w["encoded"] for w in wants) or failures or changes.get("drop")
        or changes.get("renamed") or writer.manifest is None or writer.stage1 is None
        or _stage1_change_asked(writer) or writer.upgrade_pending) if ctx.is_main else None)
    if not needed:
        return
    generation = broadcast_json(ctx, collective_step(
        ctx, lambda: writer.reserve(ctx.world_size) if ctx.is_main else None))
    rows = collective_step(ctx, lambda: writer_lib.write_videos(
        folder, encoded, generation, ctx.rank,
        between_halves=lambda: writer_lib.test_pause("shard")))
    gathered = all_gather_json(ctx, rows)
    if not ctx.is_main:
        collective_step(ctx, lambda: None)
        return
    written = [rows for rows in gathered if rows["path"]]
    collective_step(ctx, lambda: writer.commit(
        written, failures, changes.get("drop", []),
        {old: tuple(new) for old, new in changes.get("renamed", {}).items()},
        before_manifest=lambda tmp: writer_lib.test_pause("manifest")))


def _stage1_change_asked(writer):
    """--stage1 asks for another stage-1 index than the committed one records: commit (and
    rebuild it) even when no video changed."""
    return writer.stage1_request != writer.manifest["stage1"]["requested"]


def _capped(info, sampling):
    """1 if --max_frames lowered this video's rate (its segments are wider than 1/fps)."""
    if sampling["rule"] != "fps" or sampling["max_frames"] is None:
        return 0
    return int(math.ceil(info["duration"] * sampling["fps"] - 1e-6) > sampling["max_frames"])


def _encode(model, item, path, fp, preprocess, placement, device, frame_chunk):
    """One video's frames through the image encoder, in chunks of frame_chunk of its own frames
    (never mixed with another video's, so that its embeddings do not depend on its neighbours:
    an incremental build equals a fresh one bit for bit)."""
    frames = item["frames"].to(device)  # decoded on the CPU, or already there (--decode_on)
    if placement == "device":
        frames = preprocess(frames)
    with torch.inference_mode():
        embeds = torch.cat([model.encode_image(frames[i:i + frame_chunk]).float().cpu()
                            for i in range(0, len(frames), frame_chunk)])
    info = item["info"]
    return writer_lib.EncodedVideo(path, fp, embeds.numpy().astype(np.float16),
                                   list(info["times"]), list(info["indices"]),
                                   float(info["duration"]))


# ----------------------------------------------------------------------------------------------
# search and info


# A million queries of 60 characters fit; /dev/zero, or a video given by mistake, does not fill
# the memory.
QUERIES_FILE_LIMIT = 64 << 20


def read_queries(args):
    """The QUERYs, then the lines of --queries FILE (blank lines there separate, and are
    skipped). QueryError for an empty or whitespace-only QUERY."""
    queries = list(args.queries)
    if args.queries_file:
        queries += [line.strip() for line in _queries_file_lines(args.queries_file)
                    if line.strip()]
    if not queries and not args.image:
        raise ConfigError(f"--queries {args.queries_file} holds no query")
    return check_queries(queries)


def _queries_file_lines(name):
    """The lines of a --queries file (a pipe too: `--queries <(...)`), read up to
    QUERIES_FILE_LIMIT bytes. ConfigError naming the file if it cannot be read or is longer."""
    try:
        with open(name, "rb") as f:
            data = f.read(QUERIES_FILE_LIMIT + 1)
        text = data.decode(locale.getpreferredencoding(False))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--queries {name} cannot be read ({e})") from e
    if len(data) > QUERIES_FILE_LIMIT:
        raise ConfigError(f"--queries {name} holds more than {QUERIES_FILE_LIMIT >> 20} MB; give "
                          "a text file of queries, one a line (split a longer one)")
    return text.splitlines()


def run_search(args):
    """The search; with --thumbnails, its folder is claimed first, before any search work.
    returns: (the report, and None or a function that writes the hits' thumbnails, adding each
    hit's "thumbnail" path or "thumbnail_error", and returns how many it wrote), so that the
    results can be printed before any thumbnail is decoded."""
    explicit_device(args.device)
    queries = read_queries(args)  # refused before the index and the model are loaded
    thumbnails = (ThumbnailFolder.claim(args.thumbnails, len(queries) + len(args.image), args.k)
                  if args.thumbnails else None)
    if args.clips:
        clips_folder(args.clips)
    index = VideoIndex.open(args.index)
    options = dict(k=args.k, temperature=args.temperature, aggregate=args.aggregate,
                   exact=args.exact, candidates=args.candidates, device=args.device,
                   mass=args.mass, nprobe=args.nprobe, model_file=args.model)
    results = (index.search(queries, **options) if queries else []) + \
        (index.search_images(args.image, **options) if args.image else [])
    if args.clips:
        write_moment_clips(results, args.clips)
    report = search_report(args.index, results, args.aggregate, args.temperature, args.exact)
    if thumbnails is None:
        return report, None
    return report, lambda: write_thumbnails(thumbnails, index, results)


def write_thumbnails(thumbnails, index, results):
    """Each hit's thumbnail; a failed one is one line on stderr. returns: how many were
    written."""
    outcomes = thumbnails.write(results,
                                lambda hit: hit_frame(hit, index.recorded_file(hit["video"])))
    for q, hit, path, reason in outcomes:
        if path is None:
            hit["thumbnail_error"] = reason
            print(f"no thumbnail for query {q}, rank {hit['rank']}: {reason}", file=sys.stderr)
        else:
            hit["thumbnail"] = str(path.resolve())
    return sum(path is not None for _, _, path, _ in outcomes)


def clips_folder(folder):
    """--clips DIR made if missing, before any search work; ConfigError (one line) where it is
    a file or cannot be written."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"--clips {folder} is a file; give a folder for the clips") from None
    except OSError as e:
        raise ConfigError(f"--clips {folder} cannot be made ({e.strerror}); give a folder you "
                          "can write") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"--clips {folder} cannot be written; give a folder you can write")


def write_moment_clips(results, folder):
    """Each hit's moment as an MP4 in folder (hit["clip"]: its path), never replacing a file."""
    from clip_hitchhiker.search.moment_clips import (clip_name, new_part_file, place_clip,
                                                     write_clip)

    folder = Path(folder)
    for result in results:
        for hit in result["hits"]:
            made = new_part_file(folder)
            name = clip_name(hit["video"], hit["start"], hit["end"])
            try:
                write_clip(hit["video"], hit["start"], hit["end"], made,
                           clip_path=folder / name)
                hit["clip"] = str(place_clip(made, folder, name).resolve())
            finally:
                if os.path.exists(made):
                    os.unlink(made)


def format_hits(report):
    """The readable table: one block per query."""
    lines = []
    for result in report["queries"]:
        lines.append(f"query: {result['query']}" if "query" in result
                     else f"image: {result['image']}")
        lines.append(f"  {'rank':>4}  {'score':>7}  {'start':>8}  {'peak':>8}  {'end':>8}  video")
        for hit in result["hits"]:
            lines.append(f"  {hit['rank']:>4}  {hit['score']:7.4f}  {_clock(hit['start'])}  "
                         f"{_clock(hit['peak'])}  {_clock(hit['end'])}  {hit['video']}")
        if not result["hits"]:
            lines.append("  (the index is empty)")
    return "\n".join(lines)


def _clock(seconds):
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):>2d}:{rest:05.2f}"


def run_info(args):
    index = VideoIndex.open(args.index)
    info = index.info(with_times=args.times)
    if args.verify:
        info["verified_bytes"] = fmt.verify_files(index.folder, index.manifest)
    return info


def run_serve(args):
    """Open the index, load its model once, then serve the page until interrupted."""
    import secrets
    import socket

    from clip_hitchhiker.search import server

    token, local = args.token, server.is_loopback(args.host)
    if not local:
        print(f"warning: --host {args.host} lets other machines reach this index's videos; "
              "every request must carry the token", file=sys.stderr)
        token = token or secrets.token_urlsafe(18)
    service = server.SearchService(VideoIndex.open(args.index),
                                   args.cache or server.default_cache_dir(), args.device,
                                   cache_max_bytes=round(args.cache_max_mb * 10**6))
    service.warm_up()
    server.check_port_free(args.host, args.port)
    app = server.create_app(service, token, allowed_hosts=server.loopback_host_names(args.host)
                            if local else None)
    shown = server.url_host(args.host) if local else socket.gethostname()
    url = f"http://{shown}:{args.port}/" + (f"?token={token}" if token else "")
    print(f"serving {Path(args.index).resolve()} ({len(service.index)} videos) at {url} "
          "(Ctrl-C stops)", flush=True)
    server.run_server(app, args.host, args.port)
    return url


def format_info(info):
    config, sampling = info["config"], info["config"]["sampling"]
    rule = (f"{sampling['num_frames']} frames per video, uniform" if sampling["rule"] ==
            "uniform" else f"{sampling['fps']:g} fps" + (f", at most {sampling['max_frames']} "
                                                        "frames" if sampling["max_frames"]
                                                        else "") +
            (", key frames only" if sampling.get("keyframes") else ""))
    lines = [f"index: {info['index']} (generation {info['generation']})",
             f"model: {config['backend']} {config['model']}"
             + (f" ({config['pretrained']})" if config["pretrained"] else "")
             + f", {config['embed_dim']}-d; decoder {config['decoder']}",
             f"sampling: {rule}; preprocessing: {config['preprocess']}",
             f"videos: {info['num_videos']}, frames: {info['num_frames']}, disk: "
             f"{info['disk_bytes'] / 1e6:.1f} MB; stage 1: {info['stage1']['type']}; codes: "
             + (f"trained on {info['codes']['trained_on']} frames" if info["codes"] else
                "none (fewer than 4096 frames, or format version 1 or 2: run index to add them)")]
    if "verified_bytes" in info:
        lines.append(f"verified: every file's sha256 matches ({info['verified_bytes']} bytes)")
    for video in info["videos"]:
        times = " ".join(f"{t:.3f}".rstrip("0").rstrip(".") for t in video.get("times", []))
        lines.append(f"  {video['video']}  {video['duration']:.2f} s, {video['frames']} frames"
                     + (f" at {times}" if "times" in video else ""))
    for skipped in info["skipped"]:
        lines.append(f"skipped {skipped['path']}: {skipped['reason']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def main(args):
    if args.command == "index":
        summary = run_index(args)
        if summary is None:  # another rank than 0 under torchrun: rank 0 reports
            return None
        capped = f"; {summary['capped']} video(s) longer than --max_frames allows were " \
                 "sampled at a lower rate to cover them evenly" if summary["capped"] else ""
        moved = f", {summary['moved']} moved (not encoded again)" if summary["moved"] else ""
        vanished = f", {summary['vanished']} vanished" if summary["vanished"] else ""
        rebuilt = (f"; stage 1 rebuilt as {summary['stage1']} (was {summary['stage1_before']})"
                   if summary["stage1_before"] not in (None, summary["stage1"]) else "")
        print(f"indexed {summary['encoded']} new or changed video(s) "
              f"({summary['frames_encoded']} frames) in {summary['seconds']:.1f} s; "
              f"{summary['up_to_date']} up to date{moved}, {summary['failed']} failed"
              f"{vanished}, {summary['pruned']} pruned; the index holds {summary['videos']} "
              f"videos, {summary['frames']} frames{capped}{rebuilt}")
        return summary
    if args.command == "search":
        report, write_thumbnails_of_hits = run_search(args)
        if not args.json:
            print(format_hits(report), flush=True)
        if write_thumbnails_of_hits is not None:
            written = write_thumbnails_of_hits()
            if not args.json:
                hits = sum(len(result["hits"]) for result in report["queries"])
                print(f"thumbnails: {written} of {hits} written to "
                      f"{Path(args.thumbnails).resolve()} as q<query>_r<rank>.jpg")
        if args.json:
            print(json.dumps(rounded_for_print(report), indent=1))
        return report
    if args.command == "serve":
        return run_serve(args)
    info = run_info(args)
    print(json.dumps(rounded_for_print(info), indent=1) if args.json else format_info(info))
    return info


def cli(argv=None):
    """The command line: the project's own errors become one line on stderr and exit code 1."""
    silence_third_party_notices()
    warnings.filterwarnings("ignore", message="no CUDA device found")
    # The project's warnings (an index of an older format, a stage-1 file rebuilt) as one line,
    # without the source line Python would quote.
    warnings.formatwarning = lambda message, *_: f"warning: {message}\n"
    # A video's name that is not UTF-8 is printed as its own bytes, as ls prints it (Python's
    # stdout is strict outside the C locale, and a results table would end in a traceback).
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    args = parse_args(argv)
    try:
        main(args)
        sys.stdout.flush()  # here, so that a closed pipe is met below, not at exit
    except BrokenPipeError:
        # The reader went away (search ... | head -1): what it read is all it wanted. Quiet, as
        # cat and grep are; the status is the shell's for a command killed by SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    except KeyboardInterrupt:
        print("interrupted: the index keeps its last commit; run the same command again to "
              "continue", file=sys.stderr)
        sys.exit(130)
    except PeerFailure as e:
        if int(os.environ.get("RANK", "0")) == 0:  # the failing rank prints its own cause
            print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except HitchhikerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
