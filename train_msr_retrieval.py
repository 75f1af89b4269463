"""Finetune CLIP on MSR-VTT's 9k training videos with query-scoring in the contrastive loss, and
evaluate on 1k-A with the evaluator after each epoch (the recipe the release leaves out).

    python train_msr_retrieval.py --output_dir runs/qs --num_frames 12 --batch_size 128
    torchrun --nproc_per_node 8 train_msr_retrieval.py --output_dir runs/qs --precision bf16
    python train_msr_retrieval.py --output_dir runs/qs --resume runs/qs/last.pt

Stages: parse -> settings (a --resume reuses its checkpoint's) -> checks before any model is
loaded (batch, CSVs, videos, output folder) -> claim the output folder (a lock; another run's
files refused, or moved aside with --overwrite) -> prepare (model, data, optimiser; or resume)
-> for each epoch: train steps (checkpoint every --save_every steps and at the end of the
epoch) -> evaluate -> log. Epochs are numbered from 1 in the progress bar, the printout and the
log.
Your own videos: --train_csv and --eval_csv (video_path, caption; several captions a video).
"""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import data_loader
from clip_hitchhiker.models.backends import load_model
from clip_hitchhiker.models.clip_models import compute_embeddings
from clip_hitchhiker.datasets.choice import build_dataset
from clip_hitchhiker.errors import ConfigError, DatasetError, HitchhikerError, PeerFailure
from clip_hitchhiker.models.options import (add_model_arguments, check_model_arguments,
                                           decode_device, loader_workers, resolve_preprocess_on)
from clip_hitchhiker.output_files import folder_problem
from clip_hitchhiker.run_folder import FolderLock, move_aside, remove_stale_temporaries
from clip_hitchhiker.torchrun import broadcast_json, collective_step, process_group
from clip_hitchhiker.video.decoders import check_decoder, decoder_line
from clip_hitchhiker.training import (PRECISIONS, DualEncoder, EpochSampler, Trainer,
                                      TrainingClips, TrainingDiverged, append_jsonl,
                                      build_optimizer, collate_clips,
                                      enable_vision_checkpointing, logged_evaluation,
                                      read_checkpoint,
                                      restore_checkpoint, save_checkpoint, trim_log,
                                      warmup_cosine)
from data_loader import FramePreprocess
from clip_hitchhiker.reporting import format_result_line, silence_third_party_notices
from run_msr_retrieval import evaluate

DESCRIPTION = ("Finetune CLIP on MSR-VTT's 9k training videos (or a CSV of your own) with "
               "query-scoring in the contrastive loss, and evaluate on 1k-A (or a CSV of your "
               "own) after each epoch.")
# Settings a resumed run must share with its checkpoint (the rest, e.g. workers, may change).
RESUME_KEYS = ("backend", "model", "pretrained", "num_frames", "batch_size", "epochs",
               "lr_clip", "lr_new", "weight_decay", "warmup_fraction", "precision", "grad_accum",
               "qs_temperature", "learn_qs_temperature", "seed", "train_csv", "antialias")
# What a --resume does not take from its checkpoint: where and how far this invocation runs.
NOT_RESUMED = ("output_dir", "resume", "overwrite", "max_steps")
# A run's files in --output_dir: another run's are never replaced.
CHECKPOINT, LOG = "last.pt", "log.jsonl"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs: no half-written checkpoint
    is left, the folder's lock is released."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add = parser.add_argument
    add("--output_dir", required=True,
        help="the run's folder: its checkpoint (last.pt) and log.jsonl; one run at a time")
    add("--overwrite", action="store_true",
        help="start a new run in an --output_dir that holds another run's files, moving them "
             "aside into a replaced-<time>/ subfolder (nothing is deleted)")
    add("--num_frames", type=int, default=12, help="frames per video, training and eval (12)")
    add("--batch_size", type=int, default=128,
        help="global batch: videos per step across all ranks; the contrastive negatives (128)")
    add("--epochs", type=int, default=5)
    add("--max_steps", type=int, default=None,
        help="stop (checkpoint, evaluate) after this many steps in all; the schedule is still "
             "the one of --epochs, so that a later --resume continues it")
    add("--lr_clip", type=float, default=1e-7, help="learning rate of CLIP's weights (1e-7)")
    add("--lr_new", type=float, default=1e-4,
        help="learning rate of new parameters: the learnable temperature (1e-4)")
    add("--weight_decay", type=float, default=0.2)
    add("--warmup_fraction", type=float, default=0.1,
        help="share of all steps spent warming the learning rates up (0.1); then cosine")
    add("--precision", default="fp32", choices=PRECISIONS,
        help="fp32, or autocast in bf16 or fp16 (with a grad scaler)")
    add("--grad_checkpointing", action="store_true",
        help="recompute the vision tower's activations in the backward pass (less memory)")
    add("--grad_accum", type=int, default=1,
        help="split each batch into this many micro-batches (negatives: one micro-batch)")
    add("--qs_temperature", type=float, default=0.1, help="query-scoring temperature (0.1)")
    add("--learn_qs_temperature", action="store_true", help="make the temperature learnable")
    add("--seed", type=int, default=0)
    add("--save_every", type=int, default=0, metavar="STEPS",
        help="also checkpoint every STEPS steps (default: at the end of each epoch only)")
    add("--resume", default=None, metavar="CHECKPOINT",
        help="continue exactly where the checkpoint stopped, with its settings: options given "
             "here that shape the training must agree with them; --max_steps is not resumed")
    add("--eval_temperatures", type=float, nargs="+", default=[0.1])
    add("--data_root", default="./data")
    add("--msrvtt_url", default=data_loader.MSRVTT_URL)
    add("--train_csv", default=None, help="your own training videos instead of MSR-VTT's 9k")
    add("--eval_csv", default=None, help="your own evaluation videos instead of 1k-A")
    add("--video_root", default=".", help="folder that the CSV video paths are relative to")
    add_model_arguments(parser, download_root=False)
    args = parser.parse_args(argv)
    check_model_arguments(parser, args)
    for name in ("num_frames", "batch_size", "epochs", "grad_accum"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error(f"--max_steps must be >= 1, got {args.max_steps}")
    if not args.resume and (args.train_csv is None) != (args.eval_csv is None):
        parser.error("--train_csv and --eval_csv go together")
    if args.resume and not os.path.isfile(args.resume):
        parser.error(f"--resume {args.resume}: no such checkpoint")
    if args.resume and args.overwrite:
        parser.error("--overwrite starts a new run; it cannot go with --resume")
    if not 0 <= args.warmup_fraction < 1:
        parser.error(f"--warmup_fraction must lie in [0, 1), got {args.warmup_fraction}")
    args.given = given_options(parser, argv)
    return args


def given_options(parser, argv):
    """The options set on the command line (dest names), as opposed to left at their default:
    argparse fills in a default only where the namespace lacks the attribute."""
    unset = object()
    dests = vars(parser.parse_args(argv))
    given = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(dests, unset)))
    return sorted(name for name, value in vars(given).items() if value is not unset)


# ----------------------------------------------------------------------------------------------
# Settings and checks, before any model is loaded


def resume_settings(args, stored):
    """The settings of a resumed run: the checkpoint's (stored: its config), except NOT_RESUMED
    and the options given on this command line. A given option in RESUME_KEYS that differs
    from the checkpoint's is refused, naming it. returns: a new namespace."""
    differ = [k for k in RESUME_KEYS if k in args.given and k in stored
              and json.dumps(stored[k]) != json.dumps(getattr(args, k))]
    if differ:
        listed = ", ".join(f"--{k} {stored[k]} (given: {getattr(args, k)})" for k in differ)
        raise ConfigError(f"--resume {args.resume} was made with other settings: {listed}; "
                          f"leave {', '.join('--' + k for k in differ)} out to reuse the "
                          "checkpoint's, or start a new run in another --output_dir")
    merged = vars(args).copy()
    merged.update({k: v for k, v in stored.items()
                   if k in merged and k not in NOT_RESUMED and k not in args.given})
    return argparse.Namespace(**merged)


def nothing_left(args, state, evaluated):
    """Why a resumed run has nothing left to do (a finished run, or --max_steps reached), as a
    line to print; None when it has a step to take, or the evaluation that its checkpoint was
    saved for and that the log lacks (evaluated: whether the log has it)."""
    step = state["trainer"]["step"]
    if state.get("evaluation_due") and not evaluated:
        return None
    if state["epoch"] >= args.epochs:
        return (f"{args.resume} is a finished run: all {args.epochs} epochs done ({step} steps; "
                f"the evaluations are in {Path(args.resume).parent / LOG}); nothing to do. To "
                "train further, start a new run (another --output_dir, or --overwrite)")
    if args.max_steps is not None and step >= args.max_steps:
        return (f"{args.resume} is already at step {step}, --max_steps {args.max_steps}; "
                "nothing to do (leave --max_steps out to go on to the end)")
    return None


def check_batch(batch_size, grad_accum, world_size):
    """The batch must split evenly over the ranks and the micro-batches, and each loss needs a
    negative: it runs over one micro-batch of every rank together (batch_size / grad_accum
    videos), which must hold at least 2."""
    if batch_size % world_size:
        raise ConfigError(f"--batch_size {batch_size} must be a multiple of the {world_size} "
                          "ranks")
    if (batch_size // world_size) % grad_accum:
        raise ConfigError(f"--batch_size {batch_size} gives each of the {world_size} ranks "
                          f"{batch_size // world_size} videos, which must be a multiple of "
                          f"--grad_accum {grad_accum}")
    if batch_size // grad_accum < 2:
        raise ConfigError(f"--batch_size {batch_size} with --grad_accum {grad_accum} puts 1 "
                          "video in each contrastive loss: it has no negative to learn from; "
                          "use at least 2 videos per micro-batch (raise --batch_size or lower "
                          "--grad_accum)")


def check_output_dir(output_dir):
    problem = folder_problem(Path(output_dir))
    if problem:
        raise ConfigError(f"--output_dir {output_dir} cannot be written: {problem}; choose "
                          "another folder")


def read_csv(path, option):
    """The evaluator's checks of a caption CSV (columns, rows, empty cells), reused; the file
    itself is checked here to name the trainer's option."""
    if not os.path.isfile(path):
        problem = "is a folder, not a CSV file" if os.path.isdir(path) else "does not exist"
        raise DatasetError(f"{option} {path} {problem}")
    return data_loader._read_caption_csv(path)


def check_videos(paths, what, hint):
    """Count the videos that are not there, before the first step (not mid-epoch)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(paths)} {what} are missing, e.g. "
                           f"{missing[:3]}; {hint}")


def training_data(args, download):
    """The training videos, and the evaluation videos checked, before any model is loaded.
    returns: (video ids, {id: path}, {id: [captions]}) of MSR-VTT's 9k or of --train_csv."""
    csv_hint = (f"fix --video_root ({args.video_root}), the folder that the CSV paths are "
                "relative to, or the CSV")
    msrvtt_dir = Path(args.data_root) / "MSRVTT"
    msrvtt_hint = (f"point --data_root at the folder that holds a complete MSRVTT/, or delete "
                   f"{msrvtt_dir} to download it again")
    if download and not (args.train_csv and args.eval_csv):
        data_loader.download_msrvtt(args.data_root, url=args.msrvtt_url)
    if args.train_csv:
        table = read_csv(args.train_csv, "--train_csv")
        captions = table.groupby("video_path", sort=False)["caption"].apply(list).to_dict()
        paths = {v: Path(args.video_root) / v for v in captions}
        check_videos(list(paths.values()), f"training videos of {args.train_csv}", csv_hint)
    else:
        ids, captions = data_loader.load_msrvtt_training(args.data_root)
        paths = {v: msrvtt_dir / "videos" / "all" / f"{v}.mp4" for v in ids}
        check_videos(list(paths.values()), "MSR-VTT training videos", msrvtt_hint)
    if args.eval_csv:
        table = read_csv(args.eval_csv, "--eval_csv")
        check_videos([Path(args.video_root) / v for v in dict.fromkeys(table["video_path"])],
                     f"evaluation videos of {args.eval_csv}", csv_hint)
    else:
        queries = data_loader.load_msrvtt_split(args.data_root)
        check_videos([msrvtt_dir / "videos" / "all" / f"{v}.mp4"
                      for v in dict.fromkeys(queries["video_id"])],
                     "MSR-VTT 1k-A evaluation videos", msrvtt_hint)
    return list(captions), paths, captions


def claim_output_dir(output, resume, overwrite):
    """Lock the output folder for this run; clean up the temporary files of a killed run; and
    make sure that it holds no other run's files: a --resume continues a checkpoint of this
    folder, --overwrite moves them aside, anything else is refused.
    returns: (the held FolderLock, lines to print)."""
    check_output_dir(output)
    lock = FolderLock(output, option="--output_dir").acquire()
    try:
        notes = [f"removed {path} ({size / 1e6:.1f} MB), a temporary file left by a killed run"
                 for path, size in remove_stale_temporaries(output, (CHECKPOINT, LOG))]
        present = [name for name in (CHECKPOINT, LOG) if (output / name).exists()]
        continuing = resume is not None and Path(resume).resolve().parent == output.resolve()
        if present and not continuing:
            if not overwrite:
                raise ConfigError(
                    f"--output_dir {output} holds another run's {' and '.join(present)}; pass "
                    f"--resume {output / CHECKPOINT} to continue it, or --overwrite to move "
                    "its files aside and start anew (or choose another --output_dir)")
            aside = move_aside(output, (CHECKPOINT, LOG))
            notes.append(f"moved the earlier run's {' and '.join(present)} to {aside}")
    except BaseException:
        lock.release()
        raise
    return lock, notes


# ----------------------------------------------------------------------------------------------
# Prepare


def prepare(args, ctx, videos):
    loaded = load_model(args.backend, args.model, ctx.device, args.pretrained)
    loaded.module.float()  # train in fp32 weights; --precision chooses the autocast
    frame_preprocess = FramePreprocess(loaded.preprocess, torch.float32,
                                       antialias=args.antialias)
    on_device = resolve_preprocess_on(args.preprocess_on, ctx.device) == "device"
    decoding = {"decoder": args.decoder, "decode_device": decode_device(args.decode_on,
                                                                        ctx.device)}
    ids, paths, captions = videos
    clips = TrainingClips(ids, paths, captions, None if on_device else frame_preprocess,
                          args.num_frames, args.seed, **decoding)
    eval_set, _ = build_dataset(frame_preprocess, args.num_frames,
                                dataset="csv" if args.eval_csv else "msrvtt", csv=args.eval_csv,
                                video_root=args.video_root if args.eval_csv else None,
                                data_root=args.data_root, urls={"msrvtt": args.msrvtt_url},
                                download=False, **decoding)
    model = DualEncoder(loaded.module, args.qs_temperature, args.learn_qs_temperature)
    if args.grad_checkpointing:
        enable_vision_checkpointing(loaded.module)
    return loaded, model, clips, eval_set, frame_preprocess if on_device else None


def make_trainer(args, ctx, loaded, model, steps_per_epoch):
    total_steps = steps_per_epoch * args.epochs
    optimizer = build_optimizer(model, args.lr_clip, args.lr_new, args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(int(args.warmup_fraction * total_steps), total_steps))
    if ctx.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    return Trainer(model, optimizer, scheduler, loaded.tokenize, ctx.device, args.num_frames,
                   args.precision, args.grad_accum), total_steps


# ----------------------------------------------------------------------------------------------
# Evaluate


def evaluate_epoch(loaded, eval_set, ctx, args):
    """1k-A (or --eval_csv) t2v/v2t metrics with the evaluator, on every rank's share."""
    loaded.module.eval()
    with torch.inference_mode():
        content, _ = compute_embeddings(loaded, eval_set, ctx, batch_size=1,
                                        num_workers=loader_workers(args.num_workers,
                                                                   args.decode_on),
                                        frame_chunk=256)
    loaded.module.train()
    if not ctx.is_main:
        return None
    results = evaluate(content, args.eval_temperatures, ctx.device)
    for result in results:
        result.pop("ranks", None)  # per-query arrays, not for the log
    return results


# ----------------------------------------------------------------------------------------------
# Main


def main(args):
    """Train, evaluating after each epoch. returns: the list of eval results (rank 0)."""
    if args.resume:
        state = read_checkpoint(args.resume, mmap=True)
        args = resume_settings(args, state["config"])
        done = nothing_left(args, state, logged_evaluation(Path(args.output_dir) / LOG,
                                                           state["trainer"]["step"]))
        if done:
            print(done)
            return []
    with process_group(args.device) as ctx:
        return _run(args, ctx)


def _run(args, ctx):
    check_decoder(args.decoder, args.decode_on)
    output = Path(args.output_dir)
    check_batch(args.batch_size, args.grad_accum, ctx.world_size)
    lock, notes = collective_step(ctx, lambda: claim_output_dir(output, args.resume,
                                                                args.overwrite)
                                  if ctx.is_main else (None, []))
    try:
        for note in notes:
            print(note, file=sys.stderr)
        # Local rank 0 downloads MSR-VTT first; the others then read it.
        first = collective_step(ctx, lambda: training_data(args, download=True)
                                if ctx.local_rank == 0 else None)
        videos = collective_step(ctx, lambda: first if ctx.local_rank == 0
                                 else training_data(args, download=False))
        return _train(args, ctx, output, videos)
    finally:
        if lock is not None:
            lock.release()


def _train(args, ctx, output, videos):
    if ctx.is_main:  # after the refusals, which are one line each; stdout is for results
        print(decoder_line(args.decoder, args.decode_on), file=sys.stderr)
    loaded, model, clips, eval_set, device_preprocess = collective_step(
        ctx, lambda: prepare(args, ctx, videos))
    sampler = EpochSampler(len(clips), args.batch_size, args.seed, ctx.rank, ctx.world_size)
    trainer, total_steps = make_trainer(args, ctx, loaded, model, sampler.batches_per_epoch())
    stop_at = min(total_steps, args.max_steps or total_steps)
    config = {k: v for k, v in vars(args).items() if k != "given"}
    log = output / LOG if ctx.is_main else None
    epoch, batch_in_epoch, evaluation_due = start_position(args.resume, trainer, log)
    history = []
    if evaluation_due and broadcast_json(ctx, ctx.is_main and not logged_evaluation(
            log, trainer.step)):  # the run was stopped while it evaluated: that comes first
        number = epoch if batch_in_epoch == 0 else epoch + 1
        history.append(evaluate_and_log(loaded, eval_set, ctx, args, log, number, trainer.step))
    while epoch < args.epochs and trainer.step < stop_at:
        number = epoch + 1  # the epoch in progress, counted from 1 everywhere
        clips.set_epoch(epoch)
        sampler.set_position(epoch, batch_in_epoch)
        loader = DataLoader(clips, batch_size=args.batch_size // ctx.world_size, sampler=sampler,
                            num_workers=loader_workers(args.num_workers, args.decode_on),
                            collate_fn=collate_clips,
                            pin_memory=ctx.device.type == "cuda" and args.decode_on == "cpu",
                            drop_last=True, worker_init_fn=data_loader.ignore_interrupts)
        for batch in tqdm(loader, desc=f"epoch {number}/{args.epochs}",
                          disable=not ctx.is_main):
            loss = train_step(trainer, batch, device_preprocess, output)
            batch_in_epoch += 1
            append_jsonl(log, {"step": trainer.step, "epoch": number, "loss": loss,
                               "lr": [g["lr"] for g in trainer.optimizer.param_groups],
                               "qs_temperature": float(model.temperature().detach()),
                               "time": time.time()})
            if args.save_every and trainer.step % args.save_every == 0 and ctx.is_main:
                save_checkpoint(output / CHECKPOINT, trainer, epoch, batch_in_epoch, config)
            if trainer.step >= stop_at:
                break
        if batch_in_epoch >= sampler.batches_per_epoch():
            epoch, batch_in_epoch = epoch + 1, 0
        if ctx.is_main:
            save_checkpoint(output / CHECKPOINT, trainer, epoch, batch_in_epoch, config,
                            evaluation_due=True)
        history.append(evaluate_and_log(loaded, eval_set, ctx, args, log, number, trainer.step))
    return history if ctx.is_main else None


def start_position(resume, trainer, log):
    """Where the run starts: (epoch, batch_in_epoch, whether the checkpoint was saved for an
    evaluation); a resume restores trainer and trims log (rank 0's) to the checkpoint."""
    if not resume:
        return 0, 0, False
    state = read_checkpoint(resume)
    epoch, batch_in_epoch = restore_checkpoint(state, trainer)
    if log is not None and trim_log(log, trainer.step):
        print(f"{log}: dropped the records after step {trainer.step}, the checkpoint's (the "
              "resumed run takes those steps again)", file=sys.stderr)
    return epoch, batch_in_epoch, state.get("evaluation_due", False)


def evaluate_and_log(loaded, eval_set, ctx, args, log, number, step):
    """Evaluate (every rank), then log and print epoch `number`'s results (rank 0).
    returns: the history entry (None on other ranks)."""
    results = evaluate_epoch(loaded, eval_set, ctx, args)
    if not ctx.is_main:
        return None
    append_jsonl(log, {"eval": results, "epoch": number, "step": step})
    for result in results:
        print(f"epoch {number} step {step}: {format_result_line(result)}")
    return {"epoch": number, "step": step, "results": results}


def train_step(trainer, batch, device_preprocess, output):
    """One step; a divergence also says which checkpoint is kept (none is written after it)."""
    try:
        return trainer.train_step(batch, device_preprocess)
    except TrainingDiverged as e:
        # A resume would take the same steps again: the way on is a new run.
        raise TrainingDiverged(
            f"{e}; {checkpoint_note(output / CHECKPOINT, 'the last good checkpoint')}; lower "
            "--lr_clip or --lr_new (or use --precision fp32) in a new run (--overwrite moves "
            "this one aside)") from e


def checkpoint_note(path, name="the last checkpoint"):
    """What a stopped run leaves, in words."""
    if not path.is_file():
        return "no checkpoint was written before it"
    try:
        step = read_checkpoint(path, mmap=True)["trainer"]["step"]
    except ConfigError as e:
        return str(e)
    return f"{name}, {path} (step {step}), is kept"


def cli(argv=None):
    """The command line: the project's own errors become one line on stderr and exit code 1;
    Ctrl-C and SIGTERM one note (exit codes 130 and 143)."""
    silence_third_party_notices()
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        main(args)
    except KeyboardInterrupt as e:
        if int(os.environ.get("RANK", "0")) == 0:
            stopped = "terminated" if isinstance(e, Terminated) else "interrupted"
            checkpoint = Path(args.output_dir) / CHECKPOINT
            resume = f": --resume {checkpoint} continues it" if checkpoint.is_file() else ""
            print(f"{stopped}: {checkpoint_note(checkpoint)}{resume}", file=sys.stderr)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    except PeerFailure as e:
        if int(os.environ.get("RANK", "0")) == 0:  # the rank that failed prints its own cause
            print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except HitchhikerError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def _raise_terminated(signum, frame):
    raise Terminated()


if __name__ == "__main__":
    cli()
