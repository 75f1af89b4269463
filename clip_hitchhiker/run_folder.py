"""A folder that one run owns (a training run's --output_dir, a search index): one writer at a
time, another run's files moved aside rather than replaced, and the temporary files of a killed
writer cleaned up.

The lock is an flock on <folder>/.lock. Its text records the holder (pid, host, start, command),
which is read only to name a live holder in the refusal. The kernel drops an flock when its
holder dies, however it dies (kill -9 included), so a dead run never blocks the next one; its
pid and host tell the rare case of a lock still held by processes it left behind.
"""
import datetime
import fcntl
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from clip_hitchhiker.embedding_cache import temporary_prefix
from clip_hitchhiker.errors import HitchhikerError

__all__ = ["LOCK_NAME", "FolderBusy", "FolderLock", "lock_holder", "move_aside",
           "remove_stale_temporaries"]

LOCK_NAME = ".lock"
# What tempfile appends to temporary_prefix (8 characters of its alphabet).
_TEMPORARY_SUFFIX = re.compile(r"[a-z0-9_]{8}")


class FolderBusy(HitchhikerError, RuntimeError):
    """Another live process holds the folder's lock; the message names it."""


class FolderLock:
    """One writer at a time in folder (made if missing):

        with FolderLock("runs/qs", option="--output_dir"):
            ...  # only this process writes in runs/qs

    Entering raises FolderBusy, naming the holder (pid, host, since when, its command), while a
    live process holds the lock; a lock whose holder died is taken over. option: the
    command-line option that set the folder, for the message. Not re-entrant: a second
    FolderLock on the same folder in the same process is refused like another process.
    """

    def __init__(self, folder, option=None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.option = option
        self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FolderBusy(self._busy_message()) from None
            except OSError as e:
                os.close(fd)
                raise FolderBusy(f"{self._name()} cannot be locked ({e.strerror or e}): its "
                                 "file system does not support file locks; choose a folder "
                                 "on a local disk") from e
            if _same_file(fd, self.path):
                break
            # The holder released (unlinked) it between our open and our flock: a new try.
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_holder_record()).encode() + b"\n")
        self._fd = fd
        return self

    def release(self):
        """Unlink, then unlock: a process that opened the old file finds it gone and tries
        the path again (see acquire), so two holders never meet."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def _name(self):
        return f"{self.option} {self.folder}" if self.option else str(self.folder)

    def _busy_message(self):
        holder = lock_holder(self.folder)
        if holder is None:
            who = "another process (it has not recorded itself yet)"
        else:
            who = (f"pid {holder.get('pid')} on {holder.get('host')} since "
                   f"{holder.get('started')} ({holder.get('command')})")
            if holder.get("host") == socket.gethostname() and not _is_alive(holder.get("pid")):
                return (f"{self._name()} is still locked by processes that {who} left behind "
                        "(e.g. its data-loading workers); they end within seconds: try again")
        return (f"{self._name()} is in use by another run: {who}; wait for it to end, or "
                "choose another folder")


def lock_holder(folder):
    """The record of the process that holds (or last held) folder's lock: {"pid", "host",
    "started", "command"}, or None when there is none or it cannot be read."""
    try:
        record = json.loads((Path(folder) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _holder_record():
    started = datetime.datetime.fromtimestamp(time.time(), datetime.timezone.utc)
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]])}


def _same_file(fd, path):
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _is_alive(pid):
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def move_aside(folder, names, prefix="replaced"):
    """Move those of folder's entries `names` that exist into a new subfolder,
    folder/<prefix>-<UTC time>[-n]/, under the same names: nothing is deleted or replaced.
    Call it while holding the folder's lock. returns: the new subfolder, or None when none of
    names existed."""
    folder = Path(folder)
    present = [name for name in names if os.path.lexists(folder / name)]
    if not present:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    number = 0
    while True:
        target = folder / (f"{prefix}-{stamp}" + (f"-{number}" if number else ""))
        try:
            target.mkdir()
            break
        except FileExistsError:
            number += 1
    for name in present:
        os.rename(folder / name, target / name)
    return target


def remove_stale_temporaries(folder, names):
    """Delete the temporary files that write_atomically(folder / name) leaves when its process
    is killed (kill -9 gives it no chance to clean up), for each of names. Call it only while
    holding the folder's lock: no live writer then owns one.
    returns: [(path, size in bytes)] of the files removed."""
    folder = Path(folder)
    prefixes = [temporary_prefix(folder / name) for name in names]
    removed = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_file(follow_symlinks=False):
            continue
        if any(entry.name.startswith(p) and _TEMPORARY_SUFFIX.fullmatch(entry.name[len(p):])
               for p in prefixes):
            size = entry.stat(follow_symlinks=False).st_size
            os.unlink(entry.path)
            removed.append((Path(entry.path), size))
    return removed
