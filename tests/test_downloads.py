"""Resumable download, safe extraction and restricted unpickling, against a server on
127.0.0.1 serving a synthetic MSR-VTT zip."""
import pickle
import shutil
import stat
import zipfile

import numpy as np
import pytest

from clip_hitchhiker.downloads import COMPLETE_MARKER, load_restricted_pickle
from clip_hitchhiker.errors import DatasetError
from data_loader import download_msrvtt
from tests import synthetic


def test_download_and_extract(msrvtt_zip, tmp_path, capsys):
    with synthetic.FileServer(msrvtt_zip) as server:
        dataset_dir = download_msrvtt(tmp_path, url=server.url, progress=False)
    assert server.ranges == [None]
    assert (dataset_dir / COMPLETE_MARKER).is_file()
    assert (tmp_path / "MSRVTT.zip").read_bytes() == msrvtt_zip
    assert (dataset_dir / "videos" / "all" / "video7010.mp4").is_file()
    assert not list(tmp_path.glob(".MSRVTT.extracting"))
    # Complete: a second call does nothing, asks nothing, prints nothing.
    capsys.readouterr()
    assert download_msrvtt(tmp_path, url="http://127.0.0.1:9/unreachable", progress=False) \
        == dataset_dir
    assert capsys.readouterr() == ("", "")


def test_resume_after_cut_off(msrvtt_zip, tmp_path):
    half = len(msrvtt_zip) // 2
    with synthetic.FileServer(msrvtt_zip, cut_after=half) as server:
        with pytest.raises(DatasetError, match="interrupted.*run again to resume"):
            download_msrvtt(tmp_path, url=server.url, progress=False, retries=0)
        assert (tmp_path / "MSRVTT.zip.part").stat().st_size == half
        assert not (tmp_path / "MSRVTT").exists()
        download_msrvtt(tmp_path, url=server.url, progress=False, retries=0)
    assert server.ranges == [None, f"bytes={half}-"]
    assert (tmp_path / "MSRVTT.zip").read_bytes() == msrvtt_zip
    assert (tmp_path / "MSRVTT" / COMPLETE_MARKER).is_file()


def test_retries_resume_within_one_call(msrvtt_zip, tmp_path):
    with synthetic.FileServer(msrvtt_zip, cut_after=1000) as server:
        download_msrvtt(tmp_path, url=server.url, progress=False)
    assert server.ranges == [None, "bytes=1000-"]
    assert (tmp_path / "MSRVTT.zip").read_bytes() == msrvtt_zip


def test_server_ignoring_range_restarts_cleanly(msrvtt_zip, tmp_path):
    (tmp_path / "MSRVTT.zip.part").write_bytes(b"garbage that is not a prefix")
    with synthetic.FileServer(msrvtt_zip, ignore_range=True) as server:
        download_msrvtt(tmp_path, url=server.url, progress=False)
    assert server.ranges == ["bytes=28-"]
    assert (tmp_path / "MSRVTT.zip").read_bytes() == msrvtt_zip


def test_part_file_longer_than_the_file_starts_over(msrvtt_zip, tmp_path):
    (tmp_path / "MSRVTT.zip.part").write_bytes(b"x" * (len(msrvtt_zip) + 10))
    with synthetic.FileServer(msrvtt_zip) as server:
        download_msrvtt(tmp_path, url=server.url, progress=False)
    assert server.ranges == [f"bytes={len(msrvtt_zip) + 10}-", None]  # 416, then from scratch
    assert (tmp_path / "MSRVTT.zip").read_bytes() == msrvtt_zip


def test_http_404_names_url_and_status(tmp_path):
    with synthetic.FileServer(b"", status=404) as server:
        with pytest.raises(DatasetError) as error:
            download_msrvtt(tmp_path, url=server.url, progress=False)
    message = str(error.value)
    assert server.url in message and "HTTP 404" in message
    assert str(tmp_path / "MSRVTT.zip") in message  # where to put a copy made by hand
    assert not (tmp_path / "MSRVTT.zip").exists()


def test_corrupt_zip_is_moved_aside(msrvtt_zip, tmp_path):
    corrupt = bytearray(msrvtt_zip)
    # Flip bytes inside the first stored file's data: the CRC check must catch it.
    corrupt[200:210] = bytes(10)
    with synthetic.FileServer(bytes(corrupt)) as server:
        with pytest.raises(DatasetError, match="corrupt.*moved to"):
            download_msrvtt(tmp_path, url=server.url, progress=False)
    assert not (tmp_path / "MSRVTT.zip").exists()
    assert (tmp_path / "MSRVTT.zip.corrupt").is_file()
    assert not (tmp_path / "MSRVTT").exists()
    assert not (tmp_path / ".MSRVTT.extracting").exists()


@pytest.mark.parametrize("entry,message", [
    ("MSRVTT/../../evil.txt", "leaves the target folder"),
    ("/tmp/evil.txt", "absolute path"),
    ("symlink", "symbolic link"),
])
def test_unsafe_zip_entries_are_refused(msrvtt_source, tmp_path, entry, message):
    root, _ = msrvtt_source
    if entry == "symlink":
        info = zipfile.ZipInfo("MSRVTT/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        extra = [(info, "/etc/passwd")]
    else:
        extra = [(zipfile.ZipInfo(entry), "pwned")]
    zip_path = synthetic.zip_folder(root / "MSRVTT", tmp_path / "MSRVTT.zip", extra)
    data_root = tmp_path / "data" / "inner"
    data_root.mkdir(parents=True)
    shutil.copy(zip_path, data_root / "MSRVTT.zip")
    with pytest.raises(DatasetError, match=message):
        download_msrvtt(data_root, url="http://127.0.0.1:9/unused", progress=False)
    assert not (tmp_path / "data" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not (data_root / "MSRVTT").exists()


def test_interrupted_extraction_is_redone_and_kept_aside(msrvtt_zip, tmp_path):
    (tmp_path / "MSRVTT.zip").write_bytes(msrvtt_zip)
    half_done = tmp_path / "MSRVTT" / "annotation"
    half_done.mkdir(parents=True)
    (half_done / "MSR_VTT.json").write_text("{truncated")
    (tmp_path / "MSRVTT" / "my_notes.txt").write_text("mine")  # not the project's to delete
    with pytest.warns(UserWarning, match=r"MSRVTT had no completion marker .* moved to "
                                         r".*MSRVTT\.incomplete-1"):
        download_msrvtt(tmp_path, url="http://127.0.0.1:9/unused", progress=False)
    assert (tmp_path / "MSRVTT" / COMPLETE_MARKER).is_file()
    assert "annotations" in (half_done / "MSR_VTT.json").read_text()
    aside = tmp_path / "MSRVTT.incomplete-1"
    assert (aside / "my_notes.txt").read_text() == "mine"
    assert (aside / "annotation" / "MSR_VTT.json").read_text() == "{truncated"


def test_incomplete_folder_and_no_server_says_how_to_mark_it(tmp_path):
    (tmp_path / "MSRVTT" / "videos").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"MSRVTT exists but is incomplete .* cannot reach "
                                           r".* touch .*MSRVTT/\.extraction_complete"):
        download_msrvtt(tmp_path, url="http://127.0.0.1:9/unreachable", progress=False)
    assert (tmp_path / "MSRVTT" / "videos").is_dir()


def test_restricted_pickle_accepts_plain_data(tmp_path):
    data = {"a": np.int64(3), "b": [1, 2.5, "x"], "c": np.arange(4), "d": (None, True)}
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(data))
    loaded = load_restricted_pickle(tmp_path / "ok.pkl")
    assert loaded["a"] == 3 and loaded["b"] == [1, 2.5, "x"] and loaded["d"] == (None, True)
    np.testing.assert_array_equal(loaded["c"], np.arange(4))




# ---------------------------------------------------------------- single files and tar archives

def test_checked_file_is_named_only_once_its_check_passes(tmp_path):
    from clip_hitchhiker.downloads import fetch_checked_file

    def check(path):
        if not path.read_bytes().startswith(b"{"):
            raise DatasetError("not JSON")

    dest = tmp_path / "folder" / "test_data.json"
    with synthetic.FileServer(b"<html>error</html>") as server:
        with pytest.raises(DatasetError, match=r"did not give the expected file \(not JSON\); "
                                               r"it was moved to .*test_data.json.corrupt"):
            fetch_checked_file(server.url, dest, check, progress=False)
    assert not dest.exists() and (tmp_path / "folder" / "test_data.json.corrupt").is_file()
    with synthetic.FileServer(b'{"a": 1}', cut_after=3) as server:  # resumed after a cut
        assert fetch_checked_file(server.url, dest, check, progress=False) == dest
    assert dest.read_bytes() == b'{"a": 1}' and server.ranges == [None, "bytes=3-"]
    assert not list(dest.parent.glob("*.unchecked*"))
    # There: nothing is asked again.
    assert fetch_checked_file("http://127.0.0.1:9/x", dest, check, progress=False) == dest
    # A failed download says where a copy fetched by hand goes: the file's own name, not the
    # name it has while it waits for its check.
    other = tmp_path / "folder" / "val.csv"
    with synthetic.FileServer(b"", status=404) as server, pytest.raises(DatasetError) as error:
        fetch_checked_file(server.url, other, check, progress=False)
    assert str(error.value).endswith(f"download the file by hand and place it at {other}")


def tar_of(entries):
    """A tar (bytes) of (TarInfo, data or None) entries."""
    import io
    import tarfile
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for info, payload in entries:
            info.size = len(payload or b"")
            archive.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def test_tar_download_extracts_all_or_nothing(tmp_path):
    import tarfile
    from clip_hitchhiker.downloads import fetch_and_extract
    good = tar_of([(tarfile.TarInfo("YouTubeClips/a.avi"), b"video a"),
                   (tarfile.TarInfo("YouTubeClips/b.avi"), b"video b")])
    with synthetic.FileServer(good) as server:
        target = fetch_and_extract(server.url, tmp_path, "YouTubeClips.tar", "YouTubeClips",
                                   progress=False)
    assert sorted(p.name for p in target.iterdir()) == [COMPLETE_MARKER, "a.avi", "b.avi"]
    assert (target / "b.avi").read_bytes() == b"video b"
    assert not list(tmp_path.glob(".YouTubeClips.extracting"))


@pytest.mark.parametrize("entry,message", [
    ("symlink", "not a file or a folder"), ("parent", "leaves the target folder"),
    ("absolute", "leaves the target folder"), ("truncated", "is corrupt")])
def test_unsafe_or_damaged_tars_are_refused(tmp_path, entry, message):
    import tarfile
    from clip_hitchhiker.downloads import extract_tar_safely
    entries = [(tarfile.TarInfo("YouTubeClips/a.avi"), b"x" * 2000)]
    if entry == "symlink":
        link = tarfile.TarInfo("YouTubeClips/link.avi")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        entries.append((link, None))
    elif entry in ("parent", "absolute"):
        name = "YouTubeClips/../../evil.avi" if entry == "parent" else "/tmp/evil.avi"
        entries.append((tarfile.TarInfo(name), b"evil"))
    payload = tar_of(entries)
    if entry == "truncated":
        payload = payload[:1000]
    (tmp_path / "YouTubeClips.tar").write_bytes(payload)
    with pytest.raises(DatasetError, match=message):
        extract_tar_safely(tmp_path / "YouTubeClips.tar", tmp_path / "data", "YouTubeClips")
    assert not (tmp_path / "data" / "YouTubeClips").exists()
    assert not (tmp_path / "evil.avi").exists() and not list(tmp_path.glob("data/.*extracting"))
    if entry == "truncated":
        assert (tmp_path / "YouTubeClips.tar.corrupt").is_file()
