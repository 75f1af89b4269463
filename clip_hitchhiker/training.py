"""Finetuning CLIP with query-scoring inside the contrastive loss: the pieces of the recipe
(train_msr_retrieval.py puts them together).

    training frames: one random frame inside each of the F segments (the test-time rule takes
        each segment's midpoint), one random caption per video, both drawn from
        (seed, epoch, video), so that a resumed run draws exactly what an uninterrupted one did
    loss: query_scoring_contrastive_loss over the global batch (features gathered across ranks
        with their gradients, as CLIP4Clip and open_clip do)
    optimiser: AdamW, a lower learning rate for CLIP's weights than for new parameters, weight
        decay on matrices only, linear warm-up then cosine decay
"""
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from clip_hitchhiker.embedding_cache import write_atomically
from clip_hitchhiker.errors import ConfigError
from data_loader import read_video
from query_scoring import query_scoring_contrastive_loss

PRECISIONS = ("fp32", "bf16", "fp16")
CHECKPOINT_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# Data


def random_frame_indices(num_available, num_frames, rng):
    """The training rule: one uniformly random frame inside each of the release's F segments
    (edges linspace(0, n, F + 1).astype(int)); an empty segment gives its start.
    returns: list of num_frames ints in [0, num_available)."""
    edges = np.linspace(0, num_available, num_frames + 1).astype(int)
    return [min(int(rng.integers(start, max(stop, start + 1))), num_available - 1)
            for start, stop in zip(edges[:-1], edges[1:])]


def draw_rng(seed, epoch, index):
    """The generator of one video's draws in one epoch: independent of workers and order."""
    return np.random.default_rng([seed, epoch, index])


class TrainingClips(Dataset):
    """Training videos: item i of epoch e is video i with one random caption of its own and one
    random frame per segment, drawn from (seed, e, i). Items: {"index", "video" [F, 3, R, R] (or
    raw uint8 frames when preprocess is None), "caption"}.

    captions: {video_id: [captions]}; video_paths: {video_id: path}; decoder, decode_device:
    read_video's.
    """

    def __init__(self, video_ids, video_paths, captions, preprocess, num_frames, seed=0,
                 decoder="decord", decode_device="cpu"):
        missing = [v for v in video_ids if not captions.get(v)]
        if missing:
            raise ConfigError(f"{len(missing)} training videos have no caption, e.g. "
                              f"{missing[:3]}")
        self.video_ids = list(video_ids)
        self.video_paths, self.captions = video_paths, captions
        self.preprocess, self.num_frames, self.seed = preprocess, num_frames, seed
        self.decoder, self.decode_device = decoder, decode_device
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.video_ids)

    def __getitem__(self, index):
        video_id = self.video_ids[index]
        rng = draw_rng(self.seed, self.epoch, index)
        captions = self.captions[video_id]
        caption = captions[int(rng.integers(len(captions)))]
        frames, _ = read_video(self.video_paths[video_id], self.num_frames,
                               sample=lambda n, f: random_frame_indices(n, f, rng),
                               decoder=self.decoder, device=self.decode_device)
        video = frames if self.preprocess is None else self.preprocess(frames)
        return {"index": index, "video": video, "caption": caption}


def collate_clips(items):
    """"index" [B] tensor, "video" a list of B tensors (raw frames may differ in size),
    "caption" a list of B strings."""
    return {"index": torch.tensor([item["index"] for item in items]),
            "video": [item["video"] for item in items],
            "caption": [item["caption"] for item in items]}


class EpochSampler(Sampler):
    """This rank's share of a seeded permutation of the epoch, in whole global batches, from
    batch `start` on (to resume mid-epoch without replaying the batches already seen)."""

    def __init__(self, num_items, global_batch, seed, rank=0, world_size=1):
        if num_items < global_batch:
            raise ConfigError(f"{num_items} training videos are fewer than one global batch "
                              f"({global_batch}); lower --batch_size")
        self.num_items, self.global_batch, self.seed = num_items, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch, start_batch):
        self.epoch, self.start = epoch, start_batch

    def batches_per_epoch(self):
        return self.num_items // self.global_batch

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch, 1 << 20]).permutation(
            self.num_items)
        local = self.global_batch // self.world_size
        for batch in range(self.start, self.batches_per_epoch()):
            first = batch * self.global_batch + self.rank * local
            yield from order[first:first + local].tolist()

    def __len__(self):
        return (self.batches_per_epoch() - self.start) * (self.global_batch // self.world_size)


# ----------------------------------------------------------------------------------------------
# Model, loss and optimiser


class DualEncoder(torch.nn.Module):
    """The CLIP module and the learnable query-scoring temperature in one module, so that DDP
    sees every parameter: forward gives the frame and caption features."""

    def __init__(self, clip_module, temperature=0.1, learn_temperature=False):
        super().__init__()
        self.clip = clip_module
        log_temperature = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = torch.nn.Parameter(log_temperature)
        else:
            self.register_buffer("log_temperature", log_temperature)

    def forward(self, frames, tokens):
        """frames: [B * F, 3, R, R]; tokens: [B, L]. returns: ([B * F, D], [B, D])."""
        return self.clip.encode_image(frames), self.clip.encode_text(tokens)

    def temperature(self):
        return self.log_temperature.exp()

    def logit_scale(self):
        return self.clip.logit_scale.exp()


def enable_vision_checkpointing(clip_module):
    """Recompute the vision transformer's blocks in the backward pass instead of storing their
    activations (open_clip's own switch, or each block of clip's VisionTransformer wrapped)."""
    if hasattr(clip_module, "set_grad_checkpointing"):
        clip_module.visual.set_grad_checkpointing(True)
        return
    blocks = getattr(getattr(clip_module.visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ConfigError("--grad_checkpointing needs a ViT vision tower")
    for block in blocks:
        block.forward = _checkpointed(block.forward)


def _checkpointed(forward):
    def run(*args):
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False)
    return run


class GatherWithGrad(torch.autograd.Function):
    """Every rank's [b, ...] rows, concatenated in rank order; the backward pass sums each
    rank's gradient and hands every rank its own rows' share."""

    @staticmethod
    def forward(ctx, rows):
        gathered = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, rows.contiguous())
        ctx.rank, ctx.count = dist.get_rank(), len(rows)
        return torch.cat(gathered)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.count:(ctx.rank + 1) * ctx.count]


def global_batch_loss(model, frame_features, text_features, num_frames):
    """query_scoring_contrastive_loss over the global batch (one process: the local one).
    frame_features: [b * F, D]; text_features: [b, D]."""
    if dist.is_available() and dist.is_initialized():
        frame_features = GatherWithGrad.apply(frame_features)
        text_features = GatherWithGrad.apply(text_features)
    video_features = frame_features.float().view(len(text_features), num_frames, -1)
    return query_scoring_contrastive_loss(text_features.float(), video_features,
                                          temperature=model.temperature(),
                                          logit_scale=model.logit_scale())


def build_optimizer(model, lr_clip, lr_new, weight_decay):
    """AdamW: CLIP's weights at lr_clip, new parameters (the temperature) at lr_new; weight
    decay on matrices only (not on gains, biases, embeddings' scales or the temperature)."""
    groups = {"clip_decay": [], "clip_no_decay": [], "new": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if not name.startswith("clip."):
            groups["new"].append(parameter)
        elif parameter.ndim >= 2 and "embedding" not in name:
            groups["clip_decay"].append(parameter)
        else:
            groups["clip_no_decay"].append(parameter)
    return torch.optim.AdamW([
        {"params": groups["clip_decay"], "lr": lr_clip, "weight_decay": weight_decay},
        {"params": groups["clip_no_decay"], "lr": lr_clip, "weight_decay": 0.0},
        {"params": groups["new"], "lr": lr_new, "weight_decay": 0.0}])


def warmup_cosine(warmup_steps, total_steps):
    """The learning-rate factor of each step: linear from 0 to 1 over warmup_steps, then cosine
    down to 0 at total_steps."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


# ----------------------------------------------------------------------------------------------
# One step


class Trainer:
    """The optimisation state and one step of it: forward in micro-batches (--grad_accum), the
    loss on each micro-batch's global batch, AMP with a grad scaler for fp16."""

    def __init__(self, model, optimizer, scheduler, tokenize, device, num_frames,
                 precision="fp32", grad_accum=1, max_grad_norm=None):
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.tokenize, self.device, self.num_frames = tokenize, device, num_frames
        self.precision, self.grad_accum, self.max_grad_norm = precision, grad_accum, max_grad_norm
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.step = 0

    def train_step(self, batch, frame_preprocess=None):
        """batch: collate_clips of TrainingClips items; frame_preprocess: applied here, on the
        device, when the workers sent raw frames. returns: the mean micro-batch loss."""
        videos, captions = batch["video"], batch["caption"]
        micro = math.ceil(len(captions) / self.grad_accum)
        total = 0.0
        for start in range(0, len(captions), micro):
            frames = [v.to(self.device, non_blocking=True) for v in videos[start:start + micro]]
            if frame_preprocess is not None:
                frames = [frame_preprocess(v) for v in frames]
            frames = torch.stack(frames)  # [b, F, 3, R, R]
            tokens = self.tokenize(list(captions[start:start + micro])).to(self.device)
            with torch.autocast(self.device.type, dtype=self._autocast_dtype(),
                                enabled=self.precision != "fp32"):
                frame_features, text_features = self.model(frames.flatten(0, 1), tokens)
            loss = global_batch_loss(_unwrap(self.model), frame_features, text_features,
                                     self.num_frames)
            self.scaler.scale(loss / self.grad_accum).backward()
            total += float(loss.detach())
        if self.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return total / math.ceil(len(captions) / micro)

    def _autocast_dtype(self):
        return torch.bfloat16 if self.precision == "bf16" else torch.float16

    def state_dict(self):
        return {"model": _unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step}

    def load_state_dict(self, state):
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]


def _unwrap(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------------------------
# Checkpoints and logs


def save_checkpoint(path, trainer, epoch, batch_in_epoch, config):
    """Everything a resumed run needs, written atomically: the trainer's state, where the data
    stood (epoch, batches done in it), the RNG states and the configuration."""
    state = {"format": CHECKPOINT_FORMAT, "trainer": trainer.state_dict(), "epoch": epoch,
             "batch_in_epoch": batch_in_epoch, "torch_rng": torch.get_rng_state(),
             "config": json.dumps(config, sort_keys=True, default=str)}
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path, trainer, config, resume_keys):
    """Restore a checkpoint into trainer (read with weights_only=True: nothing in it runs).
    The settings in resume_keys must be the checkpoint's. returns: (epoch, batch_in_epoch)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ConfigError(f"--resume {path}: no such checkpoint") from e
    except Exception as e:  # a truncated or foreign file
        raise ConfigError(f"--resume {path} is not a readable checkpoint ({e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"--resume {path} is not a checkpoint of train_msr_retrieval.py")
    saved = json.loads(state["config"])
    changed = {k: (saved.get(k), config.get(k)) for k in resume_keys
               if json.dumps(saved.get(k), default=str) != json.dumps(config.get(k), default=str)}
    if changed:
        raise ConfigError(f"--resume {path} was made with other settings: {changed} "
                          "(checkpoint, now); resume with the same ones")
    trainer.load_state_dict(state["trainer"])
    torch.set_rng_state(state["torch_rng"])
    return state["epoch"], state["batch_in_epoch"]


def append_jsonl(path, record):
    """One JSON line, appended and flushed (the log survives a killed run)."""
    if path is None:
        return
    with open(Path(path), "a") as f:
        f.write(json.dumps(record) + "\n")
