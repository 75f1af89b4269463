"""Downloads and archives that are never mistaken for complete, and pickles that cannot run code.

    download_file        HTTP into '<dest>.part', resumed with Range, renamed when complete
    fetch_checked_file   download_file, then named only once a check of its content passes
    extract_zip_safely   CRC-checked, zip-slip-safe, staged extraction with a completion marker
    extract_tar_safely   the same for tar archives (regular files and folders only)
    load_restricted_pickle  plain data only: containers, numbers, strings, numpy arrays
"""
import collections
import contextlib
import functools
import hashlib
import http.client
import itertools
import os
import pickle
import shutil
import socket
import stat
import tarfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from clip_hitchhiker.errors import DatasetError

# Written inside an extracted folder once extraction has finished; a folder without it is redone.
COMPLETE_MARKER = ".extraction_complete"
_DOWNLOAD_BLOCK = 1 << 20


def sha256_file(path):
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_DOWNLOAD_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file_once(path):
    """sha256_file, read once per process while the file is unchanged (a model's weights are
    hashed to compare them with an index's before loading, and again by the loader)."""
    version = os.stat(path)
    return _sha256_of_version(os.path.realpath(path), version.st_size, version.st_mtime_ns,
                              version.st_ino)


@functools.lru_cache(maxsize=16)
def _sha256_of_version(path, size, mtime_ns, inode):
    return sha256_file(path)


# ----------------------------------------------------------------------------------------------
# Download

def download_file(url, dest, progress=True, retries=3, timeout=60, place_at=None):
    """Stream url into dest + '.part', resuming with HTTP Range; rename to dest when complete.

    A server that ignores Range (HTTP 200) restarts the file cleanly. After an interruption, up to
    ``retries`` resumes are tried before giving up; the next call resumes where this one stopped.
    place_at: where a failed download's message tells the user to put a copy (default dest).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            expected_size = _download_into(url, part, progress, timeout, place_at or dest)
            break
        except _Interrupted as interruption:
            if attempt == retries:
                raise DatasetError(
                    f"download of {url} was interrupted ({interruption}) with "
                    f"{part.stat().st_size} bytes in {part}; run again to resume") from interruption
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        raise DatasetError(f"download of {url} ended with {size} of {expected_size} bytes in "
                           f"{part}; run again to resume")
    os.replace(part, dest)
    return dest


def fetch_checked_file(url, dest, check, progress=True, retries=3):
    """dest, downloaded (resumably) from url unless already there, and checked.

    check(path) raises DatasetError unless the file is what it should be (not an HTML error
    page, a truncated file or another file). The download takes the name dest only once it
    passes; one that fails is moved to '<dest>.corrupt', never read again.
    returns: Path of dest.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    unchecked = dest.with_name(dest.name + ".unchecked")
    if not unchecked.is_file():
        download_file(url, unchecked, progress=progress, retries=retries, place_at=dest)
    try:
        check(unchecked)
    except DatasetError as e:
        corrupt = dest.with_name(dest.name + ".corrupt")
        os.replace(unchecked, corrupt)
        raise DatasetError(f"{url} did not give the expected file ({e}); it was moved to "
                           f"{corrupt}. Check the URL, or place a good copy at {dest}") from e
    os.replace(unchecked, dest)
    return dest


class _Interrupted(Exception):
    pass


def _download_into(url, part, progress, timeout, place_at):
    """One HTTP request that appends to (or restarts) part. returns: the full size, if known.
    place_at: where a failure's message tells the user to put a copy downloaded by hand."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "clip-hitchhiker"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part is not a prefix we can extend: start over
            part.unlink()
            return _download_into(url, part, progress, timeout, place_at)
        raise DatasetError(f"download of {url} failed: HTTP {e.code} {e.reason}. Check the URL, "
                           f"or download the file by hand and place it at {place_at}") from e
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(f"cannot reach {url}: {getattr(e, 'reason', e)}. Check the network, "
                           f"or download the file by hand and place it at {place_at}") from e
    with response:
        if response.status == 206:
            expected_size = _content_range_total(response, offset, url)
            mode = "ab"
        else:  # 200: the server sent the whole file, whatever we asked
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            expected_size = int(length) if length is not None else None
        with open(part, mode) as out, tqdm(total=expected_size, initial=offset, unit="B",
                                           unit_scale=True, desc=part.name[:-len(".part")],
                                           disable=not progress) as bar:
            try:
                while block := response.read(_DOWNLOAD_BLOCK):
                    out.write(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, OSError) as e:
                raise _Interrupted(repr(e)) from e
    if expected_size is not None and part.stat().st_size < expected_size:
        raise _Interrupted(f"connection closed at {part.stat().st_size} of {expected_size} bytes")
    return expected_size


def _content_range_total(response, offset, url):
    """Total size from 'Content-Range: bytes START-END/TOTAL', checking START is our offset."""
    content_range = response.headers.get("Content-Range", "")
    try:
        unit, spec = content_range.split(" ", 1)
        span, total = spec.split("/")
        start = int(span.split("-")[0])
    except ValueError as e:
        raise DatasetError(f"{url} answered a range request with a bad Content-Range "
                           f"{content_range!r}") from e
    if unit != "bytes" or start != offset:
        raise DatasetError(f"{url} resumed at {content_range!r}, expected byte {offset}; delete "
                           "the .part file and run again")
    return None if total == "*" else int(total)


# ----------------------------------------------------------------------------------------------
# Extraction


def fetch_and_extract(url, data_root, zip_name, top_folder, target_name=None, progress=True,
                      retries=3):
    """data_root/target_name, complete: downloaded (resumably) as data_root/zip_name and
    extracted safely unless a folder with the completion marker is already there.

    top_folder: the zip's top folder (None: no single one, see extract_zip_safely).
    returns: Path of data_root/target_name.
    """
    data_root = Path(data_root)
    target = data_root / (target_name or top_folder)
    if (target / COMPLETE_MARKER).is_file():
        return target
    data_root.mkdir(parents=True, exist_ok=True)
    zip_path = data_root / zip_name  # a .zip, or a .tar (.tar.gz, .tgz)
    if not zip_path.is_file():
        try:
            download_file(url, zip_path, progress=progress, retries=retries)
        except DatasetError as e:
            if not target.is_dir():
                raise
            raise DatasetError(
                f"{target} exists but is incomplete (no {COMPLETE_MARKER} marker), and "
                f"{zip_path.name} could not be fetched: {e}. If you extracted it there by "
                f"hand, mark it complete with: touch {target / COMPLETE_MARKER}") from e
    if zip_path.suffix == ".zip":
        extract_zip_safely(zip_path, data_root, top_folder, progress=progress,
                           target_name=target_name)
    else:
        extract_tar_safely(zip_path, data_root, top_folder, target_name=target_name)
    return target


def extract_zip_safely(zip_path, dest_root, top_folder, progress=True, target_name=None):
    """Extract zip_path's top_folder into dest_root, all or nothing.

    top_folder None: the zip has no single top folder; everything in it goes to
    dest_root/target_name.

    Every entry is checked before anything is written (no absolute paths, no '..', no symlinks)
    and every file's CRC while it is written, into a staging folder that is moved into place
    only when all is well; then COMPLETE_MARKER is written. An existing dest_root/top_folder
    (an interrupted extraction, or files the user put there) is moved aside, never deleted. A
    corrupt zip is renamed to '<zip>.corrupt' so that it is never taken for a good download.
    """
    zip_path, dest_root = Path(zip_path), Path(dest_root)
    target_name = target_name or top_folder
    damaged = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError)
    with _staging(zip_path, dest_root, target_name, damaged) as staging:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            for member in members:
                _check_member(member, zip_path)
            total = sum(m.file_size for m in members)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"extracting {zip_path.name}",
                      disable=not progress) as bar:
                for member in members:
                    _extract_member(archive, member, staging)
                    bar.update(member.file_size)
    return _move_into_place(staging, zip_path, dest_root, top_folder, target_name)


def extract_tar_safely(tar_path, dest_root, top_folder, target_name=None):
    """Extract tar_path's top_folder into dest_root, all or nothing, as extract_zip_safely does
    for zips: every entry is checked first (a regular file or a folder, no absolute path, no
    '..'), extracted into a staging folder with tarfile's "data" filter, moved into place, then
    marked complete. A truncated or damaged tar is renamed to '<tar>.corrupt'."""
    tar_path, dest_root = Path(tar_path), Path(dest_root)
    target_name = target_name or top_folder
    damaged = (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error)
    with _staging(tar_path, dest_root, target_name, damaged) as staging:
        with tarfile.open(tar_path) as archive:
            members = archive.getmembers()
            for member in members:
                _check_tar_member(member, tar_path)
            # The "data" filter where this Python has it (3.11.4, 3.12); the members are
            # checked above in any case.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            archive.extractall(staging, members=members, **safe)
    return _move_into_place(staging, tar_path, dest_root, top_folder, target_name)


@contextlib.contextmanager
def _staging(archive_path, dest_root, target_name, damaged):
    """The staging folder an archive is extracted into (emptied first). On an exception it is
    removed; on one of `damaged` the archive is renamed to '<name>.corrupt', so that it is never
    taken for a good download, and a DatasetError says so."""
    staging = dest_root / f".{target_name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        yield staging
    except damaged as e:
        shutil.rmtree(staging, ignore_errors=True)
        corrupt = archive_path.with_name(archive_path.name + ".corrupt")
        os.replace(archive_path, corrupt)
        raise DatasetError(f"{archive_path} is corrupt ({e}); it was moved to {corrupt}. Run "
                           "again to download it afresh, or place a good copy at that path") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_tar_member(member, tar_path):
    if not (member.isfile() or member.isdir()):
        raise DatasetError(f"{tar_path} has an entry that is not a file or a folder (a link or "
                           f"a device), {member.name!r}; refusing to extract it")
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise DatasetError(f"{tar_path} has an entry that leaves the target folder, "
                           f"{member.name!r}; refusing to extract it")


def _move_into_place(staging, archive_path, dest_root, top_folder, target_name):
    """The staged extraction's top_folder (or all of it) becomes dest_root/target_name, any
    folder already there moved aside; then the completion marker. returns: the target."""
    extracted = staging if top_folder is None else staging / top_folder
    if not extracted.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        raise DatasetError(f"{archive_path} has no {top_folder}/ folder; is it the right file?")
    target = dest_root / target_name
    if target.exists():
        move_aside(target)
    os.replace(extracted, target)
    if top_folder is not None:
        shutil.rmtree(staging, ignore_errors=True)
    (target / COMPLETE_MARKER).write_text(f"extracted from {archive_path.name}\n")
    return target


def move_aside(folder):
    """Rename an incomplete folder (no completion marker) to '<name>.incomplete-<n>', with a
    warning that says where it went: it may hold files that are not ours, so it is never
    deleted. returns: the new path."""
    folder = Path(folder)
    for n in itertools.count(1):
        aside = folder.with_name(f"{folder.name}.incomplete-{n}")
        if not aside.exists():
            break
    os.replace(folder, aside)
    warnings.warn(f"{folder} had no completion marker ({COMPLETE_MARKER}), so it was moved to "
                  f"{aside} and a fresh copy extracted; delete {aside} once you have checked it "
                  "holds nothing of yours", stacklevel=3)
    return aside


def _check_member(member, zip_path):
    name = member.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise DatasetError(f"{zip_path} has an entry with an absolute path, {name!r}; refusing "
                           "to extract it")
    if ".." in path.parts:
        raise DatasetError(f"{zip_path} has an entry that leaves the target folder, {name!r}; "
                           "refusing to extract it")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise DatasetError(f"{zip_path} has a symbolic link entry, {name!r}; refusing to "
                           "extract it")


def _extract_member(archive, member, staging):
    target = staging.joinpath(*PurePosixPath(member.filename.replace("\\", "/")).parts)
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    # ZipExtFile checks the CRC when the entry has been read to its end.
    with archive.open(member) as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, _DOWNLOAD_BLOCK)


# ----------------------------------------------------------------------------------------------
# Restricted unpickling


class _RestrictedUnpickler(pickle.Unpickler):
    """Plain containers, numbers, strings and numpy arrays/scalars; nothing else is built."""

    def find_class(self, module, name):
        allowed = _allowed_pickle_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return allowed[(module, name)]


def _allowed_pickle_globals():
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed = {("numpy", "dtype"): np.dtype, ("numpy", "ndarray"): np.ndarray,
               ("collections", "OrderedDict"): collections.OrderedDict,
               ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
               ("__builtin__", "set"): set, ("__builtin__", "frozenset"): frozenset}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = multiarray.scalar
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
    return allowed


def load_restricted_pickle(path):
    """Unpickle path allowing only data types (see _RestrictedUnpickler); nothing in it runs."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f).load()
    except FileNotFoundError as e:
        raise DatasetError(f"missing {path}; the dataset folder is incomplete, delete it and "
                           "download again") from e
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise DatasetError(f"{path} is not a plain-data pickle ({e}); refusing to load it") from e
