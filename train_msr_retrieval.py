"""Finetune CLIP on MSR-VTT's 9k training videos with query-scoring in the contrastive loss, and
evaluate on 1k-A with the evaluator after each epoch (the recipe the release leaves out).

    python train_msr_retrieval.py --output_dir runs/qs --num_frames 12 --batch_size 128
    torchrun --nproc_per_node 8 train_msr_retrieval.py --output_dir runs/qs --precision bf16
    python train_msr_retrieval.py --output_dir runs/qs --resume runs/qs/last.pt

Stages: parse -> prepare (model, data, optimiser; or resume) -> for each epoch: train steps
(checkpoint every --save_every steps and at the end of the epoch) -> evaluate -> log.
Your own videos: --train_csv and --eval_csv (video_path, caption; several captions a video).
"""
import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import data_loader
from clip_hitchhiker.backends import load_model
from clip_hitchhiker.clip_models import compute_embeddings
from clip_hitchhiker.dataset_choice import build_dataset
from clip_hitchhiker.errors import HitchhikerError, PeerFailure
from clip_hitchhiker.model_options import (add_model_arguments, check_model_arguments,
                                           decode_device, loader_workers, resolve_preprocess_on)
from clip_hitchhiker.torchrun import collective_step, setup_context, teardown
from clip_hitchhiker.video_decoders import check_decoder, decoder_line
from clip_hitchhiker.training import (PRECISIONS, DualEncoder, EpochSampler, Trainer,
                                      TrainingClips, append_jsonl, build_optimizer,
                                      collate_clips, enable_vision_checkpointing, load_checkpoint,
                                      save_checkpoint, warmup_cosine)
from data_loader import FramePreprocess
from clip_hitchhiker.reporting import format_result_line, silence_third_party_notices
from run_msr_retrieval import evaluate

# Settings a resumed run must share with its checkpoint (the rest, e.g. workers, may change).
RESUME_KEYS = ("backend", "model", "pretrained", "num_frames", "batch_size", "epochs",
               "lr_clip", "lr_new", "weight_decay", "warmup_fraction", "precision", "grad_accum",
               "qs_temperature", "learn_qs_temperature", "seed", "train_csv", "antialias")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--output_dir", required=True, help="the checkpoint (last.pt) and log.jsonl")
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
        help="continue exactly where the checkpoint stopped")
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
    if args.batch_size % args.grad_accum:
        parser.error(f"--batch_size {args.batch_size} must be a multiple of --grad_accum")
    if (args.train_csv is None) != (args.eval_csv is None):
        parser.error("--train_csv and --eval_csv go together")
    if args.resume and not os.path.isfile(args.resume):
        parser.error(f"--resume {args.resume}: no such checkpoint")
    if not 0 <= args.warmup_fraction < 1:
        parser.error(f"--warmup_fraction must lie in [0, 1), got {args.warmup_fraction}")
    return args


# ----------------------------------------------------------------------------------------------
# Prepare


def training_videos(args):
    """returns: (video ids, {id: path}, {id: [captions]}) of MSR-VTT's 9k or of --train_csv."""
    if args.train_csv:
        table = pd.read_csv(args.train_csv, dtype=str, keep_default_na=False)
        captions = table.groupby("video_path", sort=False)["caption"].apply(list).to_dict()
        return list(captions), {v: Path(args.video_root) / v for v in captions}, captions
    data_loader.download_msrvtt(args.data_root, url=args.msrvtt_url)
    ids, captions = data_loader.load_msrvtt_training(args.data_root)
    video_dir = Path(args.data_root) / "MSRVTT" / "videos" / "all"
    return ids, {v: video_dir / f"{v}.mp4" for v in ids}, captions


def prepare(args, ctx):
    loaded = load_model(args.backend, args.model, ctx.device, args.pretrained)
    loaded.module.float()  # train in fp32 weights; --precision chooses the autocast
    frame_preprocess = FramePreprocess(loaded.preprocess, torch.float32,
                                       antialias=args.antialias)
    on_device = resolve_preprocess_on(args.preprocess_on, ctx.device) == "device"
    decoding = {"decoder": args.decoder, "decode_device": decode_device(args.decode_on,
                                                                        ctx.device)}
    ids, paths, captions = training_videos(args)
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
    ctx = setup_context(args.device)
    try:
        return _run(args, ctx)
    finally:
        teardown(ctx)


def _run(args, ctx):
    check_decoder(args.decoder, args.decode_on)
    if ctx.is_main:
        print(decoder_line(args.decoder, args.decode_on), file=sys.stderr)  # stdout: results
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    loaded, model, clips, eval_set, device_preprocess = collective_step(
        ctx, lambda: prepare(args, ctx))
    sampler = EpochSampler(len(clips), args.batch_size, args.seed, ctx.rank, ctx.world_size)
    trainer, total_steps = make_trainer(args, ctx, loaded, model, sampler.batches_per_epoch())
    stop_at = min(total_steps, args.max_steps or total_steps)
    config = {k: v for k, v in vars(args).items()}
    epoch, batch_in_epoch = (load_checkpoint(args.resume, trainer, config, RESUME_KEYS)
                             if args.resume else (0, 0))
    log = output / "log.jsonl" if ctx.is_main else None
    history = []
    while epoch < args.epochs and trainer.step < stop_at:
        clips.set_epoch(epoch)
        sampler.set_position(epoch, batch_in_epoch)
        loader = DataLoader(clips, batch_size=args.batch_size // ctx.world_size, sampler=sampler,
                            num_workers=loader_workers(args.num_workers, args.decode_on),
                            collate_fn=collate_clips,
                            pin_memory=ctx.device.type == "cuda", drop_last=True)
        for batch in tqdm(loader, desc=f"epoch {epoch}", disable=not ctx.is_main):
            loss = trainer.train_step(batch, device_preprocess)
            batch_in_epoch += 1
            append_jsonl(log, {"step": trainer.step, "epoch": epoch, "loss": loss,
                               "lr": [g["lr"] for g in trainer.optimizer.param_groups],
                               "qs_temperature": float(model.temperature().detach()),
                               "time": time.time()})
            if args.save_every and trainer.step % args.save_every == 0 and ctx.is_main:
                save_checkpoint(output / "last.pt", trainer, epoch, batch_in_epoch, config)
            if trainer.step >= stop_at:
                break
        if batch_in_epoch >= sampler.batches_per_epoch():
            epoch, batch_in_epoch = epoch + 1, 0
        if ctx.is_main:
            save_checkpoint(output / "last.pt", trainer, epoch, batch_in_epoch, config)
        results = evaluate_epoch(loaded, eval_set, ctx, args)
        if ctx.is_main:
            history.append({"epoch": epoch, "step": trainer.step, "results": results})
            append_jsonl(log, {"eval": results, "epoch": epoch, "step": trainer.step})
            for result in results:
                print(f"epoch {epoch} step {trainer.step}: {format_result_line(result)}")
    return history if ctx.is_main else None


def cli(argv=None):
    silence_third_party_notices()
    args = parse_args(argv)
    try:
        main(args)
    except (HitchhikerError, PeerFailure) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    cli()
