"""A run's folder: the lock refuses a second writer (another process, killed or not, for real),
old files are moved aside and never deleted, a killed writer's temporary files are found."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clip_hitchhiker.run_folder import (LOCK_NAME, FolderBusy, FolderLock, lock_holder,
                                        move_aside, remove_stale_temporaries)

REPO = Path(__file__).resolve().parent.parent


def start_python(code, ready, *args):
    """A Python subprocess running code (with REPO importable); waits until it creates the
    file ready."""
    process = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while not Path(ready).exists():
        assert process.poll() is None, f"the subprocess ended early ({process.returncode})"
        assert time.monotonic() < deadline, "the subprocess did not get ready"
        time.sleep(0.02)
    return process


HOLD_LOCK = """
import sys, time
from pathlib import Path
from clip_hitchhiker.run_folder import FolderLock
with FolderLock(sys.argv[1]):
    Path(sys.argv[2]).touch()
    time.sleep(120)
"""


def test_the_lock_records_its_holder_and_refuses_a_second_one(tmp_path):
    folder = tmp_path / "run"
    with FolderLock(folder, option="--output_dir"):
        holder = lock_holder(folder)
        assert (holder["pid"], holder["host"]) == (os.getpid(), socket.gethostname())
        with pytest.raises(FolderBusy, match=f"--output_dir {folder} is in use by another run: "
                                             f"pid {os.getpid()} on {socket.gethostname()}"):
            FolderLock(folder, option="--output_dir").acquire()
    assert not (folder / LOCK_NAME).exists()  # released: nothing left
    with FolderLock(folder):  # and free again
        pass


def test_another_process_holds_it_until_it_is_killed(tmp_path):
    folder, ready = tmp_path / "run", tmp_path / "ready"
    holder = start_python(HOLD_LOCK, ready, folder, ready)
    try:
        with pytest.raises(FolderBusy, match=f"in use by another run: pid {holder.pid} on "):
            FolderLock(folder).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_holder(folder)["pid"] == holder.pid  # the dead holder's record is still there
    with FolderLock(folder):  # but it does not block
        assert lock_holder(folder)["pid"] == os.getpid()


def test_a_dead_holders_children_are_named(tmp_path):
    # The holder forks a child that inherits the lock (as DataLoader workers do), then dies.
    code = HOLD_LOCK.replace("    Path(sys.argv[2]).touch()", """\
    import os
    if os.fork() == 0:
        Path(sys.argv[2] + ".tmp").write_text(str(os.getpid()))
        os.replace(sys.argv[2] + ".tmp", sys.argv[2])
        time.sleep(120)
    os._exit(0)""")
    folder, ready = tmp_path / "run", tmp_path / "ready"
    holder = start_python(code, ready, folder, ready)
    holder.wait()
    child = int(ready.read_text())
    try:
        with pytest.raises(FolderBusy, match=f"still locked by processes that pid {holder.pid} "
                                             ".* left behind"):
            FolderLock(folder).acquire()
    finally:
        os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # the child's end releases it
        try:
            with FolderLock(folder):
                break
        except FolderBusy:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_move_aside_moves_and_never_deletes(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "last.pt").write_text("checkpoint")
    (folder / "log.jsonl").write_text("log")
    (folder / "notes.txt").write_text("mine")
    assert move_aside(folder, ["absent.pt"]) is None
    first = move_aside(folder, ["last.pt", "log.jsonl", "absent.pt"])
    assert first.parent == folder and first.name.startswith("replaced-")
    assert sorted(p.name for p in first.iterdir()) == ["last.pt", "log.jsonl"]
    assert (first / "last.pt").read_text() == "checkpoint"
    assert sorted(p.name for p in folder.iterdir()) == sorted([first.name, "notes.txt"])
    (folder / "last.pt").write_text("second")
    second = move_aside(folder, ["last.pt"])
    assert second != first and (second / "last.pt").read_text() == "second"
    assert (first / "last.pt").read_text() == "checkpoint"


WRITE_AND_HANG = """
import sys, time
from pathlib import Path
from clip_hitchhiker.embedding_cache import write_atomically
def write(tmp):
    Path(tmp).write_bytes(b"x" * 1000)
    Path(sys.argv[2]).touch()
    time.sleep(120)
write_atomically(sys.argv[1], write)
"""


def test_a_killed_writers_temporary_file_is_found_and_only_it(tmp_path):
    folder, ready = tmp_path / "run", tmp_path / "ready"
    folder.mkdir()
    writer = start_python(WRITE_AND_HANG, ready, folder / "last.pt", ready)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    left = [p for p in folder.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".last.pt.")  # what kill -9 leaves
    keep = [".last.pt.notes.txt", ".log.jsonl", "last.pt", ".other.pt.abcdefgh"]
    for name in keep:
        (folder / name).write_text("keep")
    assert remove_stale_temporaries(folder, ["last.pt", "log.jsonl"]) == [(left[0], 1000)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)
