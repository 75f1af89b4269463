"""Thumbnails of search hits: each hit's peak frame as DIR/q<query>_r<rank>.jpg.

The folder is the user's and may hold their own files, so the search writes, replaces or deletes
only files that it wrote itself. It records them in DIR/.clip-hitchhiker-thumbnails.json (name ->
sha256 of the bytes written; null while a run that may not have finished writes it). A file that
has a thumbnail's name but is not in the record, or whose bytes changed since, is the user's: the
search is refused before it starts (the names are known in advance), and nothing is overwritten.
A later search into the same folder replaces the recorded thumbnails and removes the recorded
ones it no longer has, so the folder shows the last search.

A thumbnail is taken only from a video that is still the file the index recorded (the same stat
fingerprint: size, mtime, inode, change time): a video deleted or replaced since gives a
ThumbnailError for that hit, never another video's frame.
"""
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

from clip_hitchhiker.embedding_cache import temporary_prefix, write_atomically
from clip_hitchhiker.errors import ConfigError, HitchhikerError, OutputError, VideoIndexError
from clip_hitchhiker.search.video_listing import STAT_KEYS, file_state

__all__ = ["RECORD", "ThumbnailError", "ThumbnailFolder", "hit_frame", "peak_frame",
           "thumbnail_name"]

RECORD = ".clip-hitchhiker-thumbnails.json"
_RECORD_FORMAT = "clip-hitchhiker-thumbnails"


class ThumbnailError(HitchhikerError, RuntimeError):
    """One hit's thumbnail could not be made (its video is gone, changed, or does not decode)."""


def thumbnail_name(query_number, rank):
    """The file name of query query_number's (1-based) hit of rank `rank`."""
    return f"q{query_number:02d}_r{rank:02d}.jpg"


class ThumbnailFolder:
    """A --thumbnails folder, claimed for one search: writable, and every name the search may
    write either free or a thumbnail this tool wrote."""

    def __init__(self, folder, record):
        self.folder, self.record = Path(folder), record

    @classmethod
    def claim(cls, folder, num_queries, k):
        """Check the folder before any search work (ConfigError, one line, naming it)."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"--thumbnails {folder} is a file, not a folder; name a folder "
                              "(it is made if missing)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.close(_probe(folder))
        except OSError as e:
            raise ConfigError(f"--thumbnails {folder} is not writable ({e.strerror}); name a "
                              "folder you can write to") from e
        record = _read_record(folder)
        names = [thumbnail_name(q, r) for q in range(1, num_queries + 1) for r in range(1, k + 1)]
        theirs = [n for n in names if os.path.lexists(folder / n) and not _is_ours(folder, n,
                                                                                   record)]
        if theirs:
            more = f" and {len(theirs) - 1} more" if len(theirs) > 1 else ""
            raise ConfigError(f"--thumbnails {folder} holds {theirs[0]}{more}, which search did "
                              "not write (or which changed since); move them, or name another "
                              "folder: search never overwrites a file it did not write")
        _remove_leftovers(folder, record)
        return cls(folder, record)

    def write(self, results, frame_of):
        """Write each hit's thumbnail. results: [{"hits": [...]}] per query, as search gives;
        frame_of(hit): the uint8 [H, W, 3] frame, or ThumbnailError.
        returns: [(query number, hit, path or None, reason or None)] in the hits' order."""
        planned = [(q, hit, thumbnail_name(q, hit["rank"]))
                   for q, result in enumerate(results, start=1) for hit in result["hits"]]
        self._save_record({**self.record, **{name: None for _, _, name in planned}})
        outcomes, written = [], {}
        for q, hit, name in planned:
            try:
                data = _jpeg(frame_of(hit))
                write_atomically(self.folder / name, lambda tmp: Path(tmp).write_bytes(data))
            except (ThumbnailError, OSError) as e:
                outcomes.append((q, hit, None, str(e) if isinstance(e, ThumbnailError)
                                 else f"{self.folder / name} cannot be written ({e})"))
                continue
            written[name] = hashlib.sha256(data).hexdigest()
            outcomes.append((q, hit, self.folder / name, None))
        # The recorded thumbnails this search did not write (fewer hits, failures) would show
        # another search's frames under this one's names: remove them.
        for name in set(self.record) - set(written):
            if _is_ours(self.folder, name, self.record):
                (self.folder / name).unlink(missing_ok=True)
        self._save_record(written)
        return outcomes

    def _save_record(self, files):
        self.record = files
        text = json.dumps({"format": _RECORD_FORMAT, "files": files}, indent=1, sort_keys=True)
        try:
            write_atomically(self.folder / RECORD, lambda tmp: Path(tmp).write_text(text))
        except OSError as e:
            raise OutputError(f"--thumbnails {self.folder}: {RECORD} cannot be written ({e}); "
                              "free space or name another folder") from e


def _probe(folder):
    """Create (and at once remove) a file in folder: the one test of writability that holds
    for read-only mounts and for root, whom permission bits do not stop."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=".write-test-")
    os.unlink(name)
    return handle


def _read_record(folder):
    """{name: sha256 or None} of the thumbnails this tool wrote in folder ({} if none, or if the
    record is not ours: then no file there counts as ours)."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not (isinstance(record, dict) and record.get("format") == _RECORD_FORMAT
            and isinstance(record.get("files"), dict)):
        return {}
    return {n: h for n, h in record["files"].items()
            if isinstance(n, str) and n == Path(n).name and (h is None or isinstance(h, str))}


def _is_ours(folder, name, record):
    """True if folder/name is a thumbnail this tool wrote, unchanged since. A name recorded
    without a digest was being written by a run that was stopped; its file is the tool's."""
    if name not in record:
        return False
    path = folder / name
    if path.is_symlink() or not path.is_file():
        return False
    return record[name] is None or _sha256(path) == record[name]


def _remove_leftovers(folder, record):
    """The temporary files of a recorded name's write that was killed (write_atomically's)."""
    for name in record:
        prefix = temporary_prefix(folder / name)
        for leftover in folder.glob(f"{prefix}*"):
            if len(leftover.name) == len(prefix) + 8:  # tempfile's 8 random characters
                leftover.unlink(missing_ok=True)


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _jpeg(frame):
    """uint8 [H, W, 3] -> JPEG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def hit_frame(hit, recorded):
    """The peak frame of a hit, from its video only if that is still the file the index
    recorded. recorded: the stat fingerprint of hit["video"] when it was indexed
    (video_listing.STAT_KEYS; -1: not recorded)."""
    path = hit["video"]
    try:
        state = file_state(path)
    except FileNotFoundError as e:
        raise ThumbnailError(f"{path} is gone since it was indexed (run search_videos.py "
                             "index with --prune to drop it)") from e
    except OSError as e:
        raise ThumbnailError(f"{path} cannot be read ({e.strerror})") from e
    # A replacement that kept the size and the mtime (touch -r, cp -p) still changes the inode
    # or the change time, as the indexer's own rule has it.
    if any(recorded[key] not in (-1, state[key]) for key in STAT_KEYS):
        raise ThumbnailError(f"{path} changed since it was indexed (its size, modification "
                             "time, inode or change time differ), so its frames are not the "
                             "hit's; run search_videos.py index again")
    return peak_frame(path, hit["peak"])


def peak_frame(video_path, time_s):
    """uint8 [H, W, 3]: the frame of video_path nearest time_s (seconds), or ThumbnailError."""
    import av

    from clip_hitchhiker.search.video_index import read_frame_near

    try:
        return read_frame_near(video_path, time_s)
    except (av.error.FFmpegError, OSError, IndexError, VideoIndexError) as e:
        # IndexError: no video stream; VideoIndexError: no frame.
        raise ThumbnailError(f"{video_path} cannot be decoded ({type(e).__name__}: {e})") from e
