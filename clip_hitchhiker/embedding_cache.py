"""The embedding cache: what it holds, its key, where it lives, atomic saves and safe loads.

An entry is a torch.save'd dict of plain tensors, strings and lists, read back with
weights_only=True, so a tampered file cannot run code. Writes go to a temporary file that is
renamed into place, so an interrupted write never leaves a half-written entry.
"""
import contextlib
import errno
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from clip_hitchhiker.errors import OutputError

# 2: what was decoded of each video; 3: the task and its labels; 4: keyed by the videos only
# (the texts of an entry are those of the run that wrote it; readers encode their own).
CACHE_FORMAT = 4


def cache_content(text_embeds, video_embeds, video_ids, query_video_ids, captions, skipped,
                  decoded, task="retrieval", labels=None):
    """What the cache and --save_embeddings hold: plain tensors, strings, numbers and lists.

    text_embeds: [Q, D] one row per query of the dataset (kept videos or not);
    video_embeds: [V, F, D] for the decoded videos video_ids; skipped: [[video_id, reason]];
    decoded: {video_id: {"frames", "indices", "resolution"}} for each of video_ids;
    task: "retrieval" (query_video_ids: each query's video) or "classification" (the queries
    are classes, captions their names, query_video_ids None; labels: {video_id: [class]}).
    """
    return {"format": CACHE_FORMAT, "text_embeds": text_embeds, "video_embeds": video_embeds,
            "video_ids": video_ids, "query_video_ids": query_video_ids, "captions": captions,
            "skipped": skipped, "decoded": decoded, "task": task, "labels": labels}


def cache_key(model_id, model_dtype, num_frames, dataset_id, preprocess_id):
    """Everything the video embeddings depend on, as a canonical JSON string.

    model_id: the model's name or "sha256:<file digest>"; dataset_id: a JSON-able dict naming the
    videos (dataset, split, their files), not the texts: a run with other prompts, captions or
    paragraph mode reuses the entry and encodes its own texts; preprocess_id: a string that
    changes whenever the preprocessed frames would.
    """
    return json.dumps({"format": CACHE_FORMAT, "model": model_id, "model_dtype": str(model_dtype),
                       "num_frames": num_frames, "dataset": dataset_id,
                       "preprocess": preprocess_id}, sort_keys=True)


def fingerprint_files(paths):
    """A cheap digest of files as they are now: each one's path, size and modification time (a
    missing file counts as missing). Replacing or re-encoding a video changes it."""
    entries = []
    for path in paths:
        try:
            info = os.stat(path)
            entries.append([str(path), info.st_size, info.st_mtime_ns])
        except OSError:
            entries.append([str(path), None, None])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def cache_path(cache_dir, key):
    """The entry's file for key: a digest of the key, so equal settings share one file."""
    return Path(cache_dir) / f"embeddings-{hashlib.sha256(key.encode()).hexdigest()[:20]}.pt"


def save_embeddings(path, content, key):
    """Write content (see cache_content) and its key to path, atomically."""
    write_atomically(path, lambda tmp: torch.save({**content, "key": key}, tmp))


def write_json(path, obj):
    """Write obj as indented JSON to path, atomically."""
    write_atomically(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def write_atomically(path, write, replace=True, make_folder=True, temporary=None):
    """write(tmp_path) into a temporary file beside path, then os.replace: never half-written.
    The temporary file is flushed to the disk (fsync) before it takes path's name, and the
    folder after, so that after a power cut or an OS crash path holds either its old content or
    the whole new one (a rename alone is only ordered before the data on some file systems).

    The file gets the permissions the user's umask gives any new file (the temporary file's
    own are 0600). replace=False: an existing path is never replaced (FileExistsError);
    make_folder=False: a missing folder is an error, not made again (one moved away meanwhile);
    temporary: the temporary file's path, one the caller has recorded so that it can remove what
    a kill leaves by that record rather than by a name pattern (created anew: FileExistsError
    if it exists); default a random name beginning with temporary_prefix(path)."""
    path = Path(path)
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    if temporary is not None:
        tmp_name = str(temporary)
        os.close(os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    else:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=temporary_prefix(path),
                                         delete=False) as f:
            tmp_name = f.name
    try:
        write(tmp_name)
        os.chmod(tmp_name, 0o666 & ~current_umask())
        _flush_to_disk(tmp_name)
        if not replace and os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "a file of that name exists", str(path))
        os.replace(tmp_name, path)
        _flush_to_disk(path.parent, folder=True)
    except BaseException:
        # Some writers (pyarrow) remove their half-written file themselves: the cause, not a
        # FileNotFoundError about the temporary file, is what the caller must see.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _flush_to_disk(path, folder=False):
    """fsync a file, or a folder's entries (a file system that cannot sync a folder, EINVAL,
    is left as it is)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if not (folder and e.errno == errno.EINVAL):
            raise
    finally:
        os.close(fd)


def temporary_prefix(path):
    """How the temporary files of write_atomically(path) begin (tempfile adds 8 characters):
    hidden, beside path, named for it, so that a killed writer's leftovers can be found."""
    return f".{Path(path).name}."


def current_umask():
    """The process's umask, read from /proc where it can be (setting it to read it back is not
    thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_cached_embeddings(path, key, check=None):
    """The cached content if path holds a complete entry for key, else None (with a warning
    when a file was there but unusable). check: raises unless the content is complete
    (default check_cache_content; moment localisation passes its own)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        (check or check_cache_content)(content)
    except Exception as e:  # truncated zip, wrong types, missing fields: recompute
        warnings.warn(f"ignoring unreadable embedding cache {path} ({type(e).__name__}: {e}); "
                      "recomputing", stacklevel=2)
        return None
    if content.get("key") != key:
        warnings.warn(f"ignoring stale embedding cache {path} (made for other settings); "
                      "recomputing", stacklevel=2)
        return None
    return content


def check_cache_content(content):
    """Raise ValueError unless content has the fields and consistent shapes of cache_content."""
    if not isinstance(content, dict) or content.get("format") != CACHE_FORMAT:
        raise ValueError("not an embedding cache of this format")
    text, video = content["text_embeds"], content["video_embeds"]
    if text.ndim != 2 or video.ndim != 3 or text.shape[1] != video.shape[2]:
        raise ValueError(f"shapes {tuple(text.shape)}, {tuple(video.shape)} do not fit")
    if len(content["video_ids"]) != video.shape[0] or not (
            len(content["captions"]) == len(content["query_video_ids"]) == text.shape[0]):
        raise ValueError("ids and embeddings disagree in length")
    if set(content["decoded"]) != set(content["video_ids"]):
        raise ValueError("the decoded-frames record does not list the same videos")
    if content["task"] == "classification" and not set(content["video_ids"]) <= set(
            content["labels"] or {}):
        raise ValueError("classification labels are missing for some videos")


def write_run_outputs(content, key, report, *, cache_file=None, embeddings_file=None,
                      report_file=None, more=()):
    """A run's files, after its metrics are printed: the cache entry first (at cache_file, if
    given; a failure only warns, the results stand), then the user's: the content at
    embeddings_file (--save_embeddings), the report at report_file (--output_json), then each
    callable in `more` (the plot). An OSError there is an OutputError that says the printed
    metrics are complete."""
    if cache_file is not None:
        try:
            save_embeddings(cache_file, content, key)
        except OSError as e:
            warnings.warn(f"could not write the embedding cache {cache_file} ({e}); the results "
                          "above are complete, only the cache is missing", stacklevel=3)
    try:
        if embeddings_file:
            save_embeddings(embeddings_file, content, key)
        if report_file:
            write_json(report_file, report)
        for write in more:
            write()
    except OSError as e:
        raise OutputError(f"the metrics above are complete, but an output file could not be "
                          f"written: {e}") from e
