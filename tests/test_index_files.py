"""search_videos.py index and the user's files: prunes that an unmounted drive cannot turn into
a loss, an index folder that touches only what it wrote, moved videos and a moved index, a
no-op run that reads no video, files that vanish or cannot be read, names that are not UTF-8,
lists, a full disk, symbolic links. Each test is a case that went wrong before."""
import builtins
import errno
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import search_videos
from clip_hitchhiker.search import index_format as fmt
from clip_hitchhiker.search import index_writer as writer_lib
from clip_hitchhiker.search.index_writer import IndexWriter
from clip_hitchhiker.search.video_index import VideoIndex
from clip_hitchhiker.search.video_listing import list_videos
from clip_hitchhiker.video.decoders import decord_imports
from tests import search_synthetic
from tests.test_search_videos import (assert_only_committed_files, cli_error, contents, kill_9,
                                      run, start_paused)

COLOURS = ("red", "green", "blue", "yellow")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """The colour CLIP and four segment videos (red, green, blue, yellow) to copy from."""
    root = tmp_path_factory.mktemp("library")
    return {"model": search_synthetic.save_colour_clip(root / "colour.pt"),
            "videos": {name: Path(path) for name, (path, _) in
                       search_synthetic.build_segment_videos(root / "source", COLOURS).items()}}


def copy(library, folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy2(library["videos"][name], folder / f"{name}.mp4")
    return folder


def index_argv(library, paths, index, *extra):
    return ["index", *paths, "--index", index, "--model", library["model"], *extra]


def index(library, paths, index, *extra):
    """search_videos index in this process. returns: its summary."""
    return run(*index_argv(library, paths, index, *extra))


def index_error(capsys, library, paths, index, *extra):
    """The CLI's exit code and stderr for an index run expected to fail."""
    return cli_error(capsys, *index_argv(library, paths, index, *extra), "--device", "cpu",
                     "--num_workers", "0")


def error_after_progress(err):
    """The one error line of a run that failed once its progress bar had begun."""
    assert "Traceback" not in err and err.endswith("\n")
    assert [line for line in err.splitlines() if "error:" in line] == [err.splitlines()[-1]]
    return err.splitlines()[-1]


def files_of(folder):
    """{name: bytes} of every file in folder."""
    return {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}


# ----------------------------------------------------------------------------------------------
# Prune


def test_a_prune_of_a_missing_or_empty_named_folder_is_refused(library, tmp_path, capsys):
    videos = copy(library, tmp_path / "videos", ["red", "green"])
    folder = tmp_path / "index"
    index(library, [videos], folder)
    before = contents(folder)
    videos.rename(tmp_path / "elsewhere")  # a drive that is not mounted: its folder is gone
    code, err = index_error(capsys, library, [videos], folder, "--prune")
    assert code == 1 and err.count("\n") == 1
    assert f"--prune: {videos} is missing" in err and "--confirm_prune" in err
    videos.mkdir()  # its empty mount point
    code, err = index_error(capsys, library, [videos], folder, "--prune")
    assert code == 1 and err.count("\n") == 1
    assert f"--prune: {videos} holds no video" in err and "--confirm_prune" in err
    assert contents(folder) == before
    summary = index(library, [videos], folder, "--prune", "--confirm_prune")
    assert (summary["pruned"], summary["videos"]) == (2, 0)


def test_a_confirmed_prune_of_a_missing_folder_or_file_prunes_what_was_under_it(library,
                                                                              tmp_path):
    """--confirm_prune confirms the prune that the refusal describes: the videos indexed under
    a named folder (or as a named file) that is gone are dropped, and only those."""
    first = copy(library, tmp_path / "first", ["red", "green"])
    second = copy(library, tmp_path / "second", ["blue", "yellow"])
    folder = tmp_path / "index"
    index(library, [first, second], folder)
    shutil.rmtree(first)
    summary = index(library, [first, second], folder, "--prune", "--confirm_prune")
    assert (summary["pruned"], summary["videos"]) == (2, 2)
    assert sorted(contents(folder)) == [str(second / "blue.mp4"), str(second / "yellow.mp4")]
    (second / "blue.mp4").unlink()
    summary = index(library, [second / "blue.mp4", second / "yellow.mp4"], folder, "--prune",
                    "--confirm_prune")
    assert (summary["pruned"], summary["videos"]) == (1, 1)
    assert sorted(contents(folder)) == [str(second / "yellow.mp4")]


def test_a_prune_keeps_what_the_walk_could_not_see(library, tmp_path, monkeypatch, capsys):
    """Videos under a folder that cannot be read now, or behind a link whose drive is not
    mounted, are not gone: a prune keeps them (fewer than half the index, so no refusal saves
    them). Once the link is removed, its videos are gone and pruned."""
    videos = copy(library, tmp_path / "videos", ["red", "green", "blue"])
    locked = copy(library, videos / "locked", ["yellow"])
    drive = copy(library, tmp_path / "drive", ["green"])
    (videos / "nas").symlink_to(drive)
    folder = tmp_path / "index"
    index(library, [videos], folder)
    before = contents(folder)
    assert len(before) == 5
    drive.rename(tmp_path / "unmounted")
    real_stat, real_scandir = os.stat, os.scandir

    def stat(path, *args, **kwargs):  # root passes any permission: injected
        if str(path).startswith(f"{locked}/"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    def scandir(path="."):
        if str(path) == str(locked):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "scandir", scandir)
    capsys.readouterr()
    summary = index(library, [videos], folder, "--prune")
    assert (summary["pruned"], summary["videos"]) == (0, 5) and contents(folder) == before
    err = capsys.readouterr().err
    assert f"skipped {locked}: cannot read the folder (Permission denied)" in err
    assert f"skipped {videos / 'nas'}: a broken link" in err
    (videos / "nas").unlink()
    summary = index(library, [videos], folder, "--prune")
    assert (summary["pruned"], summary["videos"]) == (1, 4)
    assert str(videos / "nas" / "green.mp4") not in contents(folder)


@pytest.mark.parametrize("indexed", range(1, 6))
def test_a_prune_of_more_than_half_the_index_is_refused_unless_confirmed(tmp_path, indexed):
    """Every count of gone videos 0..n of n = 1..5, the gone ones first or last: refused exactly
    when more than half the index would go."""
    folder = tmp_path / "videos"
    folder.mkdir()
    paths = [str(folder / f"{i}.mp4") for i in range(indexed)]
    writer = IndexWriter(tmp_path / "index", {"embed_dim": 4})
    try:
        for key in ("path", "size", "mtime_ns", "inode", "ctime_ns", "sha256"):
            writer.table[key] = paths if key == "path" else [0] * indexed
        for gone_count in range(indexed + 1):
            for gone in {tuple(paths[:gone_count]), tuple(paths[indexed - gone_count:])}:
                for path in paths:
                    Path(path).write_bytes(b"0")
                for path in gone:
                    os.unlink(path)
                present = [p for p in paths if p not in gone]
                if gone_count > indexed / 2:
                    with pytest.raises(writer_lib.VideoIndexError,
                                       match=f"would remove {gone_count} of the {indexed} "
                                             "videos.*--confirm_prune"):
                        writer.plan(present, ([str(folder)], []))
                else:
                    assert writer.plan(present, ([str(folder)], []))["drop"] == list(gone)
                plan = writer.plan(present, ([str(folder)], []), confirm_prune=True)
                assert (plan["drop"], plan["pruned"]) == (list(gone), gone_count)
    finally:
        writer.close()


def test_a_prune_of_most_of_the_index_is_refused_in_one_line(library, tmp_path, capsys):
    videos = copy(library, tmp_path / "videos", ["red", "green", "blue"])
    folder = tmp_path / "index"
    index(library, [videos], folder)
    before = contents(folder)
    (videos / "red.mp4").unlink()
    (videos / "green.mp4").unlink()
    code, err = index_error(capsys, library, [videos], folder, "--prune")
    assert code == 1 and err.count("\n") == 1
    assert f"--prune would remove 2 of the 3 videos of {folder}" in err
    assert "--confirm_prune" in err and contents(folder) == before
    summary = index(library, [videos], folder, "--prune", "--confirm_prune")
    assert (summary["pruned"], summary["videos"]) == (2, 1)


def test_a_prune_drops_only_videos_under_the_folders_named(library, tmp_path):
    first = copy(library, tmp_path / "first", ["red", "green"])
    second = copy(library, tmp_path / "second", ["blue", "yellow"])
    folder = tmp_path / "index"
    index(library, [first, second], folder)
    (second / "blue.mp4").unlink()
    assert index(library, [first], folder, "--prune")["pruned"] == 0
    assert str(second / "blue.mp4") in contents(folder)
    assert index(library, [second], folder, "--prune")["pruned"] == 1
    assert sorted(contents(folder)) == sorted(
        str(p) for p in [first / "green.mp4", first / "red.mp4", second / "yellow.mp4"])


# ----------------------------------------------------------------------------------------------
# The index folder: only what the index wrote

# Files of the user's whose names the index's files could have.
USER_FILES = {"videos-2023.parquet": b"my table", "frames-1-r0.npy": b"my frames",
              "stage1-7.faiss": b"my faiss", ".manifest.json.bak": b"my backup",
              ".frames-000001-r0.npy.orig": b"mine too",
              # Names of the manifest's former temporaries (8 characters of tempfile's alphabet).
              ".manifest.json.20240101": b"dated backup", ".manifest.json.bak_2024": b"mine"}


def test_a_folder_that_is_not_an_index_is_refused_and_left_as_it_was(library, tmp_path,
                                                                      capsys):
    videos = copy(library, tmp_path / "videos", ["red"])
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, data in {**USER_FILES, ".lock": b"my lock"}.items():
        (folder / name).write_bytes(data)
    code, err = index_error(capsys, library, [videos], folder)
    assert code == 1 and err.count("\n") == 1
    assert f"--index {folder} holds other files (" in err and "is not a search index" in err
    assert files_of(folder) == {**USER_FILES, ".lock": b"my lock"}


def test_the_users_files_in_an_index_folder_are_never_touched(library, tmp_path, capsys):
    videos = copy(library, tmp_path / "videos", ["red"])
    folder = tmp_path / "index"
    index(library, [videos], folder)
    for name, data in USER_FILES.items():
        (folder / name).write_bytes(data)
    copy(library, videos, ["green"])
    index(library, [videos], folder)          # a commit that supersedes the table and stage 1
    (videos / "red.mp4").unlink()
    assert index(library, [videos], folder, "--prune")["pruned"] == 1
    assert {n: files_of(folder)[n] for n in USER_FILES} == USER_FILES
    # A file of the user's under the name that the next commit would write: refused, kept.
    generation = fmt.read_manifest(folder)["generation"]
    in_the_way = folder / fmt.shard_name("frames", generation + 1, 0)
    in_the_way.write_bytes(b"mine")
    before = contents(folder)
    copy(library, videos, ["blue"])
    code, err = index_error(capsys, library, [videos], folder)
    assert code == 1 and error_after_progress(err).startswith(f"error: {in_the_way} is in the way")
    assert in_the_way.read_bytes() == b"mine" and contents(folder) == before


def test_an_index_written_before_the_journal_existed_keeps_working(library, tmp_path):
    """Version 1: no journal, no path_bytes, inode or ctime_ns columns. It is recognised by its
    manifest, read, and written in the current version by the next commit, its videos not
    encoded again."""
    import pyarrow.parquet as pq

    videos = copy(library, tmp_path / "videos", ["red", "green"])
    folder = tmp_path / "index"
    index(library, [videos], folder)
    before = contents(folder)
    manifest = fmt.read_manifest(folder)
    table = pq.read_table(folder / manifest["table"])
    version_1 = table.drop_columns(["path_bytes", "inode", "ctime_ns"])
    (folder / manifest["table"]).unlink()
    pq.write_table(version_1, folder / manifest["table"])
    manifest["files"][manifest["table"]] = fmt.file_record(folder, manifest["table"])
    fmt.write_manifest(folder, {**manifest, "version": 1})
    (folder / fmt.JOURNAL).unlink()
    assert VideoIndex.open(folder).table["inode"].tolist() == [-1, -1]
    summary = index(library, [videos], folder)
    assert (summary["encoded"], summary["up_to_date"]) == (0, 2)
    assert contents(folder) == before and fmt.read_manifest(folder)["version"] == fmt.VERSION
    assert VideoIndex.open(folder).table["inode"].tolist() == [
        os.stat(p).st_ino for p in sorted(before)]
    assert_only_committed_files(folder)


# ----------------------------------------------------------------------------------------------
# Moves


def test_a_moved_folder_moves_its_entries_without_encoding_them(library, tmp_path,
                                                                 monkeypatch):
    videos = copy(library, tmp_path / "videos", ["red", "green", "blue"])
    folder = tmp_path / "index"
    index(library, [videos], folder)
    decoded = []
    decode = search_videos.decode_video
    monkeypatch.setattr(search_videos, "decode_video",
                        lambda path, *a, **k: decoded.append(path) or decode(path, *a, **k))
    renamed = videos.rename(tmp_path / "renamed")
    summary = index(library, [renamed], folder)
    assert (summary["encoded"], summary.get("moved"), decoded) == (0, 3, [])
    fresh = tmp_path / "fresh"
    index(library, [renamed], fresh)
    assert contents(folder) == contents(fresh)
    hits = VideoIndex.open(folder).search(["a red video"], k=10)[0]["hits"]
    assert sorted(h["video"] for h in hits) == sorted(contents(fresh))  # each once
    # Two names swapped: both entries move. A copy (its source still there) is a new video.
    (renamed / "red.mp4").rename(renamed / "swap")
    (renamed / "green.mp4").rename(renamed / "red.mp4")
    (renamed / "swap").rename(renamed / "green.mp4")
    shutil.copy2(renamed / "blue.mp4", renamed / "blue copy.mp4")
    decoded.clear()
    summary = index(library, [renamed], folder)
    assert (summary["encoded"], summary.get("moved")) == (1, 2)
    assert decoded == [str(renamed / "blue copy.mp4")]
    fresh_again = tmp_path / "fresh_again"
    index(library, [renamed], fresh_again)
    assert contents(folder) == contents(fresh_again)
    assert_only_committed_files(folder)


def test_kill_9_while_entries_move_leaves_the_last_commit(library, tmp_path):
    videos = copy(library, tmp_path / "videos", ["red", "green"])
    folder = tmp_path / "index"
    index(library, [videos], folder)
    before = contents(folder)
    renamed = videos.rename(tmp_path / "renamed")
    kill_9(start_paused(renamed, folder, library["model"], "manifest:1", tmp_path))
    assert contents(folder) == before
    summary = index(library, [renamed], folder)
    assert (summary["encoded"], summary.get("moved")) == (0, 2)
    fresh = tmp_path / "fresh"
    index(library, [renamed], fresh)
    assert contents(folder) == contents(fresh)
    assert_only_committed_files(folder)


def test_an_index_moved_while_it_is_written_stops_the_run(library, tmp_path, monkeypatch,
                                                           capsys):
    videos = copy(library, tmp_path / "videos", ["red"])
    folder, moved = tmp_path / "index", tmp_path / "moved"
    index(library, [videos], folder)
    before = contents(folder)
    copy(library, videos, ["green"])
    monkeypatch.setattr(writer_lib, "test_pause",
                        lambda point: point == "video" and folder.rename(moved))
    code, err = index_error(capsys, library, [videos], folder)
    assert code == 1 and error_after_progress(err).startswith(
        f"error: --index {folder} was moved or removed while this run wrote it")
    assert not folder.exists()  # not made again
    monkeypatch.undo()
    assert contents(moved) == before
    assert index(library, [videos], moved)["encoded"] == 1


# ----------------------------------------------------------------------------------------------
# What a run reads


def test_an_up_to_date_run_reads_no_video(library, tmp_path, monkeypatch):
    videos = copy(library, tmp_path / "videos", ["red", "green"])
    folder = tmp_path / "index"
    index(library, [videos], folder)
    opened = []
    real_open = builtins.open

    def recording_open(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording_open)
    summary = index(library, [videos], folder)
    assert (summary["encoded"], summary["up_to_date"]) == (0, 2)
    assert not [p for p in opened if p.endswith(".mp4")]
    # A touch changes the mtime, not the content: hashed once, recorded, not encoded again.
    stat = os.stat(videos / "red.mp4")
    os.utime(videos / "red.mp4", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    summary = index(library, [videos], folder)
    assert (summary["encoded"], summary["up_to_date"]) == (0, 2)
    assert [p for p in opened if p.endswith(".mp4")] == [str(videos / "red.mp4")]
    opened.clear()
    assert index(library, [videos], folder)["up_to_date"] == 2
    assert not [p for p in opened if p.endswith(".mp4")]


def test_a_video_that_vanishes_before_it_is_decoded_is_not_recorded(library, tmp_path,
                                                                     monkeypatch, capsys):
    videos = copy(library, tmp_path / "videos", ["red", "green"])
    green, aside = videos / "green.mp4", tmp_path / "green.mp4"
    folder = tmp_path / "index"
    decode = search_videos.decode_video

    def vanishing(path, *args, **kwargs):
        if path == str(green):
            green.rename(aside)
        return decode(path, *args, **kwargs)

    monkeypatch.setattr(search_videos, "decode_video", vanishing)
    summary = index(library, [videos], folder)
    assert (summary["encoded"], summary["failed"], summary.get("vanished")) == (1, 0, 1)
    assert f"skipped {green}: it disappeared while being indexed" in capsys.readouterr().err
    assert VideoIndex.open(folder).info()["skipped"] == []
    monkeypatch.undo()
    aside.rename(green)
    assert index(library, [videos], folder)["encoded"] == 1
    assert sorted(contents(folder)) == [str(green), str(videos / "red.mp4")]


def test_an_unreadable_video_is_skipped_and_recorded(library, tmp_path, monkeypatch, capsys):
    """Permission denied where the indexer opens the file (injected: root reads any file)."""
    videos = copy(library, tmp_path / "videos", ["red", "green"])
    green = videos / "green.mp4"
    folder = tmp_path / "index"
    real_open = builtins.open

    def denied(file, *args, **kwargs):
        if str(file) == str(green):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    summary = index(library, [videos], folder)
    assert (summary["encoded"], summary["failed"]) == (1, 1)
    reason = f"cannot read {green} (Permission denied)"
    assert f"skipped {green}: {reason}" in capsys.readouterr().err
    skipped = VideoIndex.open(folder).info()["skipped"]
    assert [(s["path"], s["reason"]) for s in skipped] == [(str(green), reason)]
    assert index(library, [videos], folder)["failed"] == 0  # not tried again while unchanged
    monkeypatch.undo()
    os.chmod(green, 0o644)  # made readable: its ctime changes
    assert index(library, [videos], folder)["encoded"] == 1
    assert VideoIndex.open(folder).info()["skipped"] == []


def test_an_indexed_video_that_cannot_be_read_now_keeps_its_entry(library, tmp_path,
                                                                   monkeypatch, capsys):
    """A chmod (or a share that denies reads for a while) is no reason to lose the frames that
    an earlier run encoded: the video is reported each run, and its entry kept as it was."""
    videos = copy(library, tmp_path / "videos", ["red", "green"])
    green = videos / "green.mp4"
    folder = tmp_path / "index"
    index(library, [videos], folder)
    before = contents(folder)
    real_open = builtins.open

    def denied(file, *args, **kwargs):
        if str(file) == str(green):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    os.chmod(green, 0o000)  # its ctime changes: the indexer reads it (injected: root reads all)
    monkeypatch.setattr(builtins, "open", denied)
    capsys.readouterr()
    summary = index(library, [videos], folder)
    assert (summary["encoded"], summary["failed"], summary["videos"]) == (0, 1, 2)
    assert (f"skipped {green}: cannot read {green} (Permission denied); its entry from an "
            "earlier run is kept") in capsys.readouterr().err
    assert contents(folder) == before and VideoIndex.open(folder).info()["skipped"] == []
    monkeypatch.undo()
    os.chmod(green, 0o644)  # readable again, the same content: not encoded again
    summary = index(library, [videos], folder)
    assert (summary["encoded"], summary["failed"], summary["up_to_date"]) == (0, 0, 2)
    assert contents(folder) == before


def test_a_file_name_that_is_not_utf8_is_indexed_and_found(library, tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    raw = os.fsencode(videos) + b"/caf\xe9 red.mp4"
    try:
        shutil.copy2(library["videos"]["red"], raw)
    except OSError as e:
        pytest.skip(f"this file system takes no non-UTF-8 name ({e})")
    folder = tmp_path / "index"
    assert index(library, [videos], folder, "--decoder", "pyav")["encoded"] == 1
    hit = VideoIndex.open(folder).search(["a red video"], k=1)[0]["hits"][0]
    assert hit["video"] == os.fsdecode(raw) and os.path.isfile(hit["video"])
    import pyarrow.parquet as pq
    stored = pq.read_table(folder / fmt.read_manifest(folder)["table"]).to_pylist()[0]
    assert stored["path_bytes"] == raw
    assert stored["path"] == f"{videos}/caf\\xe9 red.mp4"  # readable UTF-8 elsewhere
    assert index(library, [videos], folder, "--decoder", "pyav")["up_to_date"] == 1
    # Printed as its own bytes, even where stdout is strict UTF-8 (outside the C locale).
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", out)
    search_videos.cli(["search", "--index", str(folder), "a red video", "-k", "1"])
    out.flush()
    assert raw in out.buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Lists, links, empty folders


def test_a_txt_list_is_one_path_a_line_and_entries_that_are_no_file_are_reported(tmp_path):
    for name in ["holiday, part 2.mp4", "plain.mp4"]:
        (tmp_path / name).write_bytes(b"0")
    (tmp_path / "folder.mp4").mkdir()
    text = ("# my videos\n\nholiday, part 2.mp4\n  plain.mp4  \nmissing.mp4\nfolder.mp4\n"
            "/dev/zero\n")
    for extension in (".txt", ".lst"):
        list_file = tmp_path / f"list{extension}"
        list_file.write_text(text)
        listing = list_videos([list_file])
        assert listing.videos == [str(tmp_path / "holiday, part 2.mp4"),
                                  str(tmp_path / "plain.mp4")]
        assert listing.skipped == [
            (str(tmp_path / "missing.mp4"), f"not found (listed in {list_file})"),
            (str(tmp_path / "folder.mp4"), f"a folder, not a video file (listed in {list_file})"),
            ("/dev/zero", f"not a regular file (a device, pipe or socket) (listed in "
                          f"{list_file})")]
        assert str(tmp_path / "missing.mp4") in listing.files  # a prune looks at it
    (tmp_path / "list.csv").write_text('path,caption\n"holiday, part 2.mp4",a caption\n'
                                       "missing.mp4,another\n")
    listing = list_videos([tmp_path / "list.csv"])
    assert listing.videos == [str(tmp_path / "holiday, part 2.mp4")]
    assert [path for path, _ in listing.skipped] == [str(tmp_path / "missing.mp4")]


@pytest.mark.parametrize("first_row", ["missing.mp4,a caption", "missing.mp4", "file,caption"])
def test_a_csv_first_row_is_a_header_only_when_it_names_the_path_column(tmp_path, first_row):
    """A headerless .csv whose first video is gone: that row is data, reported and looked at by
    a prune like any other (it was taken as a header, silently); so is a first row naming no
    known column. A header names "path", "video_path" or "video", any case."""
    (tmp_path / "plain.mp4").write_bytes(b"0")
    missing = str(tmp_path / first_row.split(",")[0])
    list_file = tmp_path / "list.csv"
    list_file.write_text(f"{first_row}\nplain.mp4,another\n")
    listing = list_videos([list_file])
    assert listing.videos == [str(tmp_path / "plain.mp4")]
    assert listing.skipped == [(missing, f"not found (listed in {list_file})")]
    assert listing.files == [missing, str(tmp_path / "plain.mp4")]
    for header, row in (("Path", "plain.mp4"), ("caption, Video ", "a caption,plain.mp4"),
                        ("VIDEO_PATH,caption", "plain.mp4,a caption")):
        list_file.write_text(f"{header}\n{row}\n")
        assert (list_videos([list_file]).videos, list_videos([list_file]).skipped) == \
            ([str(tmp_path / "plain.mp4")], [])


def test_a_headerless_csv_prunes_its_first_video_once_it_is_gone(library, tmp_path, capsys):
    videos = copy(library, tmp_path / "videos", ["red", "green", "blue"])
    list_file = videos / "list.csv"
    list_file.write_text("red.mp4\ngreen.mp4\nblue.mp4\n")
    folder = tmp_path / "index"
    assert index(library, [list_file], folder)["videos"] == 3
    (videos / "red.mp4").unlink()
    capsys.readouterr()
    summary = index(library, [list_file], folder, "--prune")
    assert (summary["pruned"], summary["videos"]) == (1, 2)
    assert f"skipped {videos / 'red.mp4'}: not found (listed in {list_file})" in \
        capsys.readouterr().err
    assert [Path(p).name for p in VideoIndex.open(folder).table["path"]] == ["blue.mp4",
                                                                             "green.mp4"]


def test_a_folder_without_videos_is_said_so(library, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("no video here")
    folder = tmp_path / "index"
    code, err = index_error(capsys, library, [empty], folder)
    assert code == 1 and err.count("\n") == 1
    assert f"{empty} hold(s) no video file (.mp4" in err and "nothing to index" in err
    assert not folder.exists()
    videos = copy(library, tmp_path / "videos", ["red"])
    assert index(library, [videos, empty], folder)["encoded"] == 1
    assert f"warning: {empty} holds no video" in capsys.readouterr().err


def test_links_keep_their_path_linked_folders_are_walked_once_and_skips_are_said(
        library, tmp_path, monkeypatch, capsys):
    store_a = copy(library, tmp_path / "store_a", ["red"])
    store_b = copy(library, tmp_path / "store_b", ["green"])
    (store_b / "loop").symlink_to(store_b)
    videos = tmp_path / "videos"
    (videos / "locked").mkdir(parents=True)
    (videos / "my red.mp4").symlink_to(store_a / "red.mp4")
    (videos / "shared").symlink_to(store_b)
    (videos / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    scandir = os.scandir

    def unreadable(path="."):
        if str(path) == str(videos / "locked"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", unreadable)  # root reads any folder: injected
    folder = tmp_path / "index"
    index(library, [videos], folder)
    assert sorted(contents(folder)) == [str(videos / "my red.mp4"),
                                        str(videos / "shared" / "green.mp4")]
    err = capsys.readouterr().err
    assert f"skipped {videos / 'gone.mp4'}: a broken link" in err
    assert f"skipped {videos / 'locked'}: cannot read the folder (Permission denied)" in err
    assert (f"skipped {videos / 'shared' / 'loop'}: links to a folder listed already "
            f"({store_b})") in err
    (videos / "my red.mp4").unlink()
    assert index(library, [videos], folder, "--prune")["pruned"] == 1
    assert sorted(contents(folder)) == [str(videos / "shared" / "green.mp4")]


def test_a_folder_is_walked_as_itself_before_a_link_to_it_that_sorts_first(tmp_path):
    """'alink' -> 'zreal' sorts before its target: the video is still listed under its own
    folder, and the skip names the link, not the folder (which is no link)."""
    real = tmp_path / "videos" / "zreal"
    real.mkdir(parents=True)
    (real / "red.mp4").write_bytes(b"0")
    (tmp_path / "videos" / "alink").symlink_to(real)
    (real / "up").symlink_to(tmp_path / "videos")  # a loop, from inside the real folder
    listing = list_videos([tmp_path / "videos"])
    assert listing.videos == [str(real / "red.mp4")]
    assert listing.skipped == [
        (str(tmp_path / "videos" / "alink"), f"links to a folder listed already ({real})"),
        (str(real / "up"), f"links to a folder listed already ({tmp_path / 'videos'})")]


def test_a_folder_named_through_a_link_takes_over_its_resolved_entries(library, tmp_path):
    """Older versions stored resolved paths: naming the folder through a link moves its entries
    to the link's paths, without encoding them and without a second entry."""
    store = copy(library, tmp_path / "store", ["red", "green"])
    (tmp_path / "link").symlink_to(store)
    folder = tmp_path / "index"
    index(library, [store], folder)
    summary = index(library, [tmp_path / "link"], folder)
    assert (summary["encoded"], summary.get("moved")) == (0, 2)
    assert sorted(contents(folder)) == [str(tmp_path / "link" / n) for n in ("green.mp4",
                                                                              "red.mp4")]


def test_a_folder_named_without_the_link_it_was_indexed_through_takes_over_its_entries(
        library, tmp_path):
    """The other way: indexed through a link (or, before the walk took folders before links,
    under a link that sorted first), then named as itself: the entries move to the folder's own
    paths, not encoded again and not listed twice (the link's paths still reach the files)."""
    store = copy(library, tmp_path / "store", ["red", "green"])
    (tmp_path / "link").symlink_to(store)
    folder = tmp_path / "index"
    index(library, [tmp_path / "link"], folder)
    summary = index(library, [store], folder)
    assert (summary["encoded"], summary.get("moved")) == (0, 2)
    assert sorted(contents(folder)) == [str(store / n) for n in ("green.mp4", "red.mp4")]


# ----------------------------------------------------------------------------------------------
# One line, not a traceback


def test_a_full_disk_is_named_in_one_line_and_the_index_keeps_its_last_commit(
        library, tmp_path, monkeypatch, capsys):
    import pyarrow.parquet as pq

    videos = copy(library, tmp_path / "videos", ["red"])
    folder = tmp_path / "index"
    index(library, [videos], folder)
    before = contents(folder)
    copy(library, videos, ["green"])

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", disk_full)
    code, err = index_error(capsys, library, [videos], folder)
    assert code == 1 and error_after_progress(err).startswith(
        f"error: cannot write the index in {folder}: no space left on device")
    assert "FileNotFoundError" not in err and ".videos-" not in err  # no temporary file named
    monkeypatch.undo()
    assert contents(folder) == before
    assert_only_committed_files(folder)  # the failed commit's files are removed
    assert index(library, [videos], folder)["encoded"] == 1


def test_an_index_that_is_a_file_is_refused_before_the_model_loads(library, tmp_path,
                                                                  monkeypatch, capsys):
    from clip_hitchhiker.models import backends

    videos = copy(library, tmp_path / "videos", ["red"])
    (tmp_path / "index").write_text("mine")
    monkeypatch.setattr(backends, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    code, err = index_error(capsys, library, [videos], tmp_path / "index")
    assert code == 1 and err.count("\n") == 1
    assert f"--index {tmp_path / 'index'} is a file, not a folder" in err
    assert (tmp_path / "index").read_text() == "mine"


def test_a_read_only_index_folder_is_named_in_one_line(library, tmp_path, monkeypatch, capsys):
    """A folder where no file can be created (injected at os.open: root writes anywhere)."""
    videos = copy(library, tmp_path / "videos", ["red"])
    folder = tmp_path / "index"
    index(library, [videos], folder)
    copy(library, videos, ["green"])
    real_open = os.open
    tmpfile = getattr(os, "O_TMPFILE", 0)  # an unnamed file in the folder: tempfile uses it

    def read_only(path, flags, *args, **kwargs):
        creates = flags & os.O_CREAT or (tmpfile and flags & tmpfile == tmpfile)
        if creates and os.fspath(path).startswith(str(folder)):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    code, err = index_error(capsys, library, [videos], folder)
    assert code == 1 and err.count("\n") == 1
    assert f"--index {folder} cannot be written (Permission denied)" in err


@pytest.mark.skipif(not decord_imports(), reason="decord does not import here")
def test_decords_own_error_lines_stay_off_the_terminal(library, tmp_path, capfd):
    videos = copy(library, tmp_path / "videos", ["red"])
    (videos / "broken.mp4").write_bytes(b"not a video")
    folder = tmp_path / "index"
    summary = index(library, [videos], folder, "--decoder", "decord")
    assert (summary["encoded"], summary["failed"]) == (1, 1)
    err = capfd.readouterr().err
    assert f"skipped {videos / 'broken.mp4'}: cannot decode" in err
    assert "video_reader.cc" not in err and err.count("Invalid data found") == 1
    reason = VideoIndex.open(folder).info()["skipped"][0]["reason"]
    assert "the decoder printed: " in reason and "Invalid data found" in reason


def test_decoder_log_captures_what_a_child_process_writes_to_fd_2():
    """The capture is of the file descriptor, so C libraries' writes are caught too."""
    from clip_hitchhiker.video.decoders import decoder_log

    with decoder_log() as lines:
        subprocess.run(["sh", "-c", "echo '[h264 @ 0x1] bad nal' >&2; "
                                    "echo '[00:42:13] /src/video/video_reader.cc:83: ERROR' >&2"],
                       check=True)
    assert lines == ["bad nal", "ERROR"]
