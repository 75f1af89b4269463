"""The torchrun helpers in one process: without a process group, and in a 1-rank gloo group
(so that the real collective code runs)."""
import datetime

import pytest
import torch
import torch.distributed as dist
from torch.testing import assert_close

from clip_hitchhiker.errors import ConfigError
from clip_hitchhiker.torchrun import (Context, all_gather_json, all_gather_rows, broadcast_json,
                                      collective_step, setup_context, shard)

CPU = Context(torch.device("cpu"))


@pytest.fixture
def one_rank_group(tmp_path):
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield CPU
    dist.destroy_process_group()


@pytest.mark.parametrize("count,world_size,expected", [
    (7, 3, [[0, 1, 2], [3, 4], [5, 6]]),
    (2, 3, [[0], [1], []]),
    (4, 1, [[0, 1, 2, 3]]),
])
def test_shards_are_contiguous_and_cover_everything(count, world_size, expected):
    shares = [shard(count, Context(torch.device("cpu"), rank=r, world_size=world_size))
              for r in range(world_size)]
    assert shares == expected


def test_without_a_group_the_helpers_return_their_input():
    rows = torch.arange(6.0).view(3, 2)
    assert all_gather_rows(CPU, rows) is rows
    assert all_gather_json(CPU, {"a": [1, "x"]}) == [{"a": [1, "x"]}]
    assert collective_step(CPU, lambda: 5) == 5
    with pytest.raises(KeyError, match="boom"):
        collective_step(CPU, lambda: {}["boom"])


@pytest.mark.parametrize("rows", [torch.arange(6.0).view(3, 2), torch.zeros(0, 2),
                                  torch.tensor([3, 1, 2], dtype=torch.long)])
def test_gather_rows_in_a_one_rank_group(one_rank_group, rows):
    gathered = all_gather_rows(one_rank_group, rows)
    assert gathered.dtype == rows.dtype
    assert_close(gathered, rows, atol=0, rtol=0)


def test_json_and_errors_in_a_one_rank_group(one_rank_group):
    obj = {"ids": ["video7010", "ünïcode"], "n": 3, "none": None}
    assert all_gather_json(one_rank_group, obj) == [obj]
    assert broadcast_json(one_rank_group, True) is True
    assert collective_step(one_rank_group, lambda: "ok") == "ok"
    with pytest.raises(ZeroDivisionError):  # the failing rank re-raises its own error
        collective_step(one_rank_group, lambda: 1 / 0)


def test_cuda_device_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
        setup_context("cuda")
    assert setup_context("cpu").device == torch.device("cpu")


def _stalled_rank(rank, store_path, report_path):
    """Rank 1 stops itself (SIGSTOP); rank 0 must name it instead of waiting forever."""
    import os
    import signal

    from clip_hitchhiker.errors import PeerFailure
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    if rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    ctx = Context(torch.device("cpu"), rank=0, world_size=2, timeout_s=3)
    try:
        collective_step(ctx, lambda: "ok")
        message = "no error"
    except PeerFailure as e:
        message = str(e)
    with open(report_path, "w") as f:
        f.write(message)


def test_a_stopped_rank_is_named_after_the_timeout(tmp_path):
    import multiprocessing
    import os
    import signal
    context = multiprocessing.get_context("spawn")
    report = tmp_path / "report.txt"
    ranks = [context.Process(target=_stalled_rank, args=(r, str(tmp_path / "store"), str(report)))
             for r in (0, 1)]
    for process in ranks:
        process.start()
    try:
        ranks[0].join(timeout=120)
        assert ranks[0].exitcode == 0
    finally:
        for process in ranks:
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join()
    message = report.read_text()
    assert "Ranks 1 failed to pass monitoredBarrier" in message
    assert "--dist_timeout 3 s" in message


def test_teardown_waits_for_every_rank_only_when_this_one_finished(monkeypatch):
    """A finished rank passes a barrier before it leaves the group (no rank closes its
    connections while another uses them); a failing one leaves at once; a barrier that fails
    still leaves the group, and its PeerFailure reaches the caller."""
    from clip_hitchhiker import torchrun
    from clip_hitchhiker.errors import PeerFailure
    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append("leave"))
    monkeypatch.setattr(torchrun, "_wait_to_leave", lambda ctx: calls.append("wait"))
    two = Context(torch.device("cpu"), rank=1, world_size=2)
    torchrun.teardown(two)
    assert calls == ["wait", "leave"]
    calls.clear()
    torchrun.teardown(two, finished=False)
    assert calls == ["leave"]
    calls.clear()
    torchrun.teardown(CPU)  # no group joined: nothing to leave
    assert calls == []

    def failing(ctx):
        calls.append("wait")
        raise PeerFailure("rank 0: gone")
    monkeypatch.setattr(torchrun, "_wait_to_leave", failing)
    with pytest.raises(PeerFailure, match="rank 0: gone"):
        torchrun.teardown(two)
    assert calls == ["wait", "leave"]

    def broken_leave():
        raise RuntimeError("connection reset")
    monkeypatch.setattr(dist, "destroy_process_group", broken_leave)
    with pytest.raises(KeyError, match="the run's own"):  # not hidden by the failed leave
        with pytest.warns(UserWarning, match="leaving the process group failed: RuntimeError: "
                                             "connection reset"):
            try:
                raise KeyError("the run's own")
            finally:
                torchrun.teardown(two, finished=False)


def test_process_group_leaves_without_waiting_when_its_body_raises(monkeypatch):
    from clip_hitchhiker import torchrun
    left = []
    monkeypatch.setattr(torchrun, "setup_context", lambda device, timeout_s: CPU)
    monkeypatch.setattr(torchrun, "teardown", lambda ctx, finished=True: left.append(finished))
    with torchrun.process_group("cpu") as ctx:
        assert ctx is CPU
    with pytest.raises(KeyError, match="boom"):
        with torchrun.process_group("cpu"):
            raise KeyError("boom")
    assert left == [True, False]


def _leaving_rank(rank, store_path, report_path, case):
    """Both ranks gather once; then rank 1 fails ("fails"), or rank 0 works on alone for twice
    the collectives' timeout ("slow"), or both finish; both leave by teardown."""
    import time

    from clip_hitchhiker.errors import PeerFailure
    from clip_hitchhiker.torchrun import new_leave_group, teardown
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=2))
    ctx = Context(torch.device("cpu"), rank=rank, world_size=2, timeout_s=2,
                  leave_group=new_leave_group())
    all_gather_json(ctx, rank)
    if case == "slow" and rank == 0:
        time.sleep(4)  # rank 0 evaluates and writes the results alone
    try:
        teardown(ctx, finished=not (case == "fails" and rank == 1))
        message = "left"
    except PeerFailure as e:
        message = str(e)
    with open(f"{report_path}.{rank}", "w") as f:
        f.write(message)


@pytest.mark.parametrize("case", ["finish", "slow", "fails"])
def test_ranks_leave_together_and_a_failed_one_is_named(tmp_path, case):
    import multiprocessing
    import os
    import signal
    import time
    context = multiprocessing.get_context("spawn")
    report = tmp_path / "report"
    ranks = [context.Process(target=_leaving_rank,
                             args=(r, str(tmp_path / "store"), str(report), case))
             for r in (0, 1)]
    start = time.monotonic()
    for process in ranks:
        process.start()
    try:
        for process in ranks:
            process.join(timeout=120)
        assert [p.exitcode for p in ranks] == [0, 0]
    finally:
        for process in ranks:
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join()
    messages = [(tmp_path / f"report.{r}").read_text() for r in (0, 1)]
    if case == "fails":
        # Rank 0 finished, and its barrier names rank 1, which left without it.
        assert messages[1] == "left"
        assert "Ranks 1 failed to pass monitoredBarrier" in messages[0]
        assert "at the end of the run: a rank stopped before it finished" in messages[0]
    else:  # rank 0's solo work outlasting the collectives' timeout is no failure
        assert messages == ["left", "left"]
    assert time.monotonic() - start < 100
