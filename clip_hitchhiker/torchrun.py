"""Device choice and, under torchrun, the process group and the collectives the CLI needs.

Every collective goes through an initialised process group; without one (a plain single process)
the helpers return their input. Nothing received from another rank is unpickled: metadata
travels as JSON in uint8 tensors.
"""
import contextlib
import datetime
import json
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from clip_hitchhiker.errors import ConfigError, PeerFailure


DEFAULT_TIMEOUT_S = 1800.0
# How long a finished rank waits at the end for the others (rank 0 evaluates and writes alone).
LEAVE_TIMEOUT_S = 7 * 24 * 3600.0


@dataclass
class Context:
    """Where this process runs: its device and, under torchrun, its rank.

    timeout_s: how long a collective waits for the other ranks; monitor_group: the gloo group
    whose monitored barrier names the ranks that did not answer (None: the default group);
    leave_group: the gloo group of the wait at the end (teardown), with a timeout of its own.
    """
    device: torch.device
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    monitor_group: object = None
    leave_group: object = None

    @property
    def is_main(self):
        return self.rank == 0


def setup_context(device_arg, timeout_s=DEFAULT_TIMEOUT_S):
    """Choose the device; under torchrun (WORLD_SIZE > 1) also join the process group.

    device_arg: "auto" (CUDA when present, else the CPU), "cpu", "cuda" or "cuda:N".
    timeout_s: how long any collective waits for a rank before the run stops, naming it.
    """
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
        device = explicit_device(device_arg)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    monitor_group = None
    if world_size > 1:
        timeout = datetime.timedelta(seconds=timeout_s)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout)
        if backend != "gloo":  # monitored barriers exist for gloo only
            monitor_group = dist.new_group(backend="gloo", timeout=timeout)
        return Context(device, rank, local_rank, world_size, timeout_s, monitor_group,
                       new_leave_group())
    return Context(device, rank, local_rank, world_size, timeout_s)


def new_leave_group():
    """A gloo group over every rank for teardown's wait (every rank must call this, in the same
    order as any other new_group): a group's own timeout bounds what a barrier's other ranks
    wait for rank 0, so the wait at the end, while rank 0 evaluates and writes alone, needs a
    group whose timeout is LEAVE_TIMEOUT_S, not the collectives' --dist_timeout."""
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=LEAVE_TIMEOUT_S))


def explicit_device(device_arg):
    """torch.device of "cpu", "cuda" or "cuda:N"; ConfigError (one line) where that GPU is not
    here, before a model is loaded onto it."""
    device = torch.device(device_arg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device_arg}: CUDA is not available on this machine (no "
                          "GPU, or a CPU-only build of torch); use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device_arg}: this machine has "
                          f"{torch.cuda.device_count()} GPU(s), cuda:0 to "
                          f"cuda:{torch.cuda.device_count() - 1}")
    return device


def teardown(ctx, finished=True):
    """Leave the process group that setup_context joined, if any. finished: this rank's run
    ended without an error; it then first waits for every rank to finish (a monitored barrier),
    so that no rank tears down its connections while another still uses them (gloo aborted a
    rank at exit now and then, "terminate called without an active exception", without it).
    That wait is not bounded by ctx.timeout_s: rank 0 alone evaluates and writes the results
    after the last collective, for as long as that takes (a rank that exited early is still
    named at once: gloo sees its connections close). A run whose barrier fails raises PeerFailure (on
    rank 0 naming the ranks that left early). A failing rank leaves at once, and an error in
    leaving never hides the error that ended its run (a warning instead)."""
    if ctx.world_size > 1 and dist.is_initialized():
        try:
            if finished:
                _wait_to_leave(ctx)
        finally:
            try:
                dist.destroy_process_group()
            except Exception as e:  # noqa: BLE001  the run's own outcome matters more
                warnings.warn(f"leaving the process group failed: {type(e).__name__}: {e}",
                              stacklevel=2)


def _wait_to_leave(ctx):
    try:
        dist.monitored_barrier(group=ctx.leave_group,
                               timeout=datetime.timedelta(seconds=LEAVE_TIMEOUT_S),
                               wait_all_ranks=True)
    except RuntimeError as e:
        raise PeerFailure(f"{str(e).strip()} (at the end of the run: a rank stopped before "
                          "it finished)") from e


@contextlib.contextmanager
def process_group(device_arg, timeout_s=DEFAULT_TIMEOUT_S):
    """setup_context's Context, the group left on the way out (teardown: after waiting for the
    other ranks when the body finished, at once when it raised)."""
    ctx = setup_context(device_arg, timeout_s)
    try:
        yield ctx
    except BaseException:
        teardown(ctx, finished=False)
        raise
    teardown(ctx)


def _in_group():
    return dist.is_available() and dist.is_initialized()


def collective_step(ctx, fn):
    """Run fn on this rank; if any rank raised, raise on every rank, so that none waits forever.

    The failing rank re-raises its own exception; the others raise PeerFailure naming it. A
    rank that does not arrive within ctx.timeout_s (hung or stopped) is named by the others.
    """
    try:
        result, error = fn(), None
    except Exception as e:  # re-raised below, after the other ranks have been told
        result, error = None, e
    if _in_group():
        wait_for_all_ranks(ctx)
        messages = all_gather_json(ctx, None if error is None else
                                   f"{type(error).__name__}: {error}")
        failed = [f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None]
        if failed and error is None:
            raise PeerFailure("; ".join(failed))
    if error is not None:
        raise error
    return result


def wait_for_all_ranks(ctx):
    """A barrier that names, on rank 0, the ranks that did not arrive within ctx.timeout_s."""
    try:
        dist.monitored_barrier(group=ctx.monitor_group,
                               timeout=datetime.timedelta(seconds=ctx.timeout_s),
                               wait_all_ranks=True)
    except RuntimeError as e:
        raise PeerFailure(f"{str(e).strip()} (waited --dist_timeout {ctx.timeout_s:g} s; a rank "
                          "that stopped or hung holds up the others)") from e


def all_gather_rows(ctx, rows):
    """Every rank's rows [n_r, ...] concatenated in rank order (n_r may differ). CPU in and out."""
    if not _in_group():
        return rows
    world_size = dist.get_world_size()
    on_device = rows.to(ctx.device)
    counts = [torch.zeros(1, dtype=torch.long, device=ctx.device) for _ in range(world_size)]
    dist.all_gather(counts, torch.tensor([len(rows)], device=ctx.device))
    counts = [int(c) for c in counts]
    padded = on_device.new_zeros((max(max(counts), 1), *rows.shape[1:]))
    padded[:len(rows)] = on_device
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, counts)]).cpu()


def all_gather_json(ctx, obj):
    """Every rank's JSON-able obj, as a list in rank order (JSON, so nothing is unpickled)."""
    payload = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
    gathered = all_gather_rows(ctx, payload.clone())
    counts = all_gather_rows(ctx, torch.tensor([len(payload)]))
    chunks = torch.split(gathered, counts.tolist())
    return [json.loads(bytes(c.tolist()).decode()) for c in chunks]


def broadcast_json(ctx, obj):
    """Rank 0's JSON-able obj, on every rank."""
    return all_gather_json(ctx, obj)[0]


def shard(count, ctx):
    """This rank's contiguous share of range(count); shares differ by at most one."""
    return np.array_split(np.arange(count), ctx.world_size)[ctx.rank].tolist()
