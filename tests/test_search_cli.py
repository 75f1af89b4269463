"""search_videos.py as a new user and a careless one meet it: thumbnails that never overwrite a
user's file and never show another video's frame, a closed pipe, a missing GPU, a model file that
moved, an index's own model as the default, and open_clip given a path."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import search_videos
from tests import search_synthetic
from tests.test_search_videos import cli_error, copy_videos, run

REPO = Path(__file__).resolve().parent.parent
RECORD = ".clip-hitchhiker-thumbnails.json"  # what search wrote there (docs/search.md)


@pytest.fixture(scope="module")
def three_videos(tmp_path_factory):
    """red, green and blue (of the search test videos), the colour CLIP and an index of them."""
    root = tmp_path_factory.mktemp("search_cli")
    truth = search_synthetic.build_segment_videos(root / "all", colours=("red", "green", "blue"))
    model = search_synthetic.save_colour_clip(root / "colour.pt")
    copy_videos(truth, root / "videos", ["red", "green", "blue"])
    run("index", root / "videos", "--index", root / "index", "--model", model)
    return {"root": root, "truth": truth, "model": model, "index": root / "index"}


def search_cli(capsys, *argv):
    """search_videos.cli(argv): (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        search_videos.cli([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def image_colour(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=float).mean((0, 1))


def near(colour, name):
    return np.abs(colour - search_synthetic.SEARCH_COLOURS[name]).max() < 12


# ----------------------------------------------------------------------------------------------
# --thumbnails


def test_thumbnails_never_overwrite_a_users_file(three_videos, tmp_path, capsys):
    thumbs = tmp_path / "thumbs"
    thumbs.mkdir()
    (thumbs / "q01_r02.jpg").write_bytes(b"my holiday photo")
    search = ["search", "--index", three_videos["index"], "a red video", "-k", 2,
              "--thumbnails", thumbs]
    code, out, err = search_cli(capsys, *search)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: --thumbnails {thumbs} holds q01_r02.jpg, which search did "
                          "not write")
    assert (thumbs / "q01_r02.jpg").read_bytes() == b"my holiday photo"
    assert sorted(os.listdir(thumbs)) == ["q01_r02.jpg"]

    # Moved aside, the search writes its thumbnails and records them.
    (thumbs / "q01_r02.jpg").rename(tmp_path / "mine.jpg")
    code, out, err = search_cli(capsys, *search[:4], "a blue video", *search[4:])
    assert code == 0 and err == ""
    names = ["q01_r01.jpg", "q01_r02.jpg", "q02_r01.jpg", "q02_r02.jpg"]
    assert sorted(os.listdir(thumbs)) == sorted([RECORD, *names])
    assert near(image_colour(thumbs / "q01_r01.jpg"), "red")
    assert near(image_colour(thumbs / "q02_r01.jpg"), "blue")
    assert out.splitlines()[-1] == (f"thumbnails: 4 of 4 written to {thumbs} as "
                                    "q<query>_r<rank>.jpg")

    # Its own thumbnails a later search replaces, and those it no longer has it removes ...
    code, out, err = search_cli(capsys, *search[:3], "a green video", "-k", 1,
                                "--thumbnails", thumbs)
    assert code == 0 and sorted(os.listdir(thumbs)) == [RECORD, "q01_r01.jpg"]
    assert near(image_colour(thumbs / "q01_r01.jpg"), "green")
    # ... but one the user changed since is theirs.
    with open(thumbs / "q01_r01.jpg", "ab") as f:
        f.write(b"edited")
    edited = (thumbs / "q01_r01.jpg").read_bytes()
    code, out, err = search_cli(capsys, *search)
    assert code == 1 and "holds q01_r01.jpg, which search did not write" in err
    assert (thumbs / "q01_r01.jpg").read_bytes() == edited


def test_a_search_stopped_while_writing_thumbnails_leaves_only_its_own_files(tmp_path):
    """Stopped between two thumbnails (the disk as a kill -9 there leaves it: the first written,
    the second's temporary file behind), the next search takes the folder as its own."""
    from clip_hitchhiker.search.thumbnails import ThumbnailFolder

    results = [{"hits": [{"rank": 1, "video": "a.mp4"}, {"rank": 2, "video": "b.mp4"}]}]
    frame = np.full((8, 8, 3), 200, np.uint8)

    def stopped_at_the_second(hit):
        if hit["rank"] == 2:
            (tmp_path / ".q01_r02.jpg.x1y2z3w4").write_bytes(b"half a JPEG")
            raise KeyboardInterrupt
        return frame
    with pytest.raises(KeyboardInterrupt):
        ThumbnailFolder.claim(tmp_path, 1, 2).write(results, stopped_at_the_second)
    assert sorted(os.listdir(tmp_path)) == sorted([RECORD, ".q01_r02.jpg.x1y2z3w4",
                                                   "q01_r01.jpg"])
    (tmp_path / "notes.txt").write_text("mine")
    again = ThumbnailFolder.claim(tmp_path, 1, 2)  # not refused: q01_r01.jpg is the tool's
    outcomes = again.write(results, lambda hit: frame)
    assert [(q, hit["rank"], path.name, reason) for q, hit, path, reason in outcomes] == [
        (1, 1, "q01_r01.jpg", None), (1, 2, "q01_r02.jpg", None)]
    assert sorted(os.listdir(tmp_path)) == sorted([RECORD, "notes.txt", "q01_r01.jpg",
                                                   "q01_r02.jpg"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_a_thumbnails_folder_that_is_a_file_or_read_only_stops_before_the_search(
        three_videos, tmp_path, capsys, kind):
    if kind == "file":
        thumbs = tmp_path / "thumbs.jpg"
        thumbs.write_bytes(b"mine")
        expected = f"error: --thumbnails {thumbs} is a file, not a folder; name a folder"
    else:
        # Permission bits do not stop root; sysfs lets nobody create a file.
        thumbs = tmp_path / "read-only" if os.geteuid() != 0 else Path("/sys/kernel")
        thumbs.mkdir(exist_ok=True)
        thumbs.chmod(0o555) if os.geteuid() != 0 else None
        expected = f"error: --thumbnails {thumbs} is not writable (Permission denied)"
        if not thumbs.is_dir():
            pytest.skip("no read-only folder here")
    # An index that does not exist: the thumbnails folder is checked before any search work.
    code, out, err = search_cli(capsys, "search", "--index", tmp_path / "no-index",
                                "a red video", "--thumbnails", thumbs)
    assert code == 1 and err.count("\n") == 1 and err.startswith(expected), err
    code, out, err = search_cli(capsys, "search", "--index", three_videos["index"],
                                "a red video", "--thumbnails", thumbs)
    assert code == 1 and out == "" and err.startswith(expected)
    if kind == "file":
        assert thumbs.read_bytes() == b"mine"


def test_thumbnails_of_a_deleted_or_replaced_video_come_after_the_results(three_videos,
                                                                          tmp_path, capsys):
    truth = three_videos["truth"]
    copy_videos(truth, tmp_path / "videos", ["red", "green", "blue"])
    index = tmp_path / "index"
    run("index", tmp_path / "videos", "--index", index, "--model", three_videos["model"])
    (tmp_path / "videos" / "green.mp4").unlink()
    # Replaced by another video: its frames are not those the index holds for green.mp4.
    shutil.copy(truth["blue"][0], tmp_path / "videos" / "red.mp4")
    thumbs = tmp_path / "thumbs"
    code, out, err = search_cli(capsys, "search", "--index", index, "a red video",
                                "a green video", "a blue video", "-k", 1, "--thumbnails", thumbs)
    assert code == 0
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("query: ")] == [
        "query: a red video", "query: a green video", "query: a blue video"]
    assert lines[-1].startswith("thumbnails: 1 of 3 written to ")
    red, green = tmp_path / "videos" / "red.mp4", tmp_path / "videos" / "green.mp4"
    assert err.splitlines() == [
        f"no thumbnail for query 1, rank 1: {red} changed since it was indexed (its size, "
        "modification time, inode or change time differ), so its frames are not the hit's; "
        "run search_videos.py index again",
        f"no thumbnail for query 2, rank 1: {green} is gone since it was indexed (run "
        "search_videos.py index with --prune to drop it)"]
    assert sorted(os.listdir(thumbs)) == [RECORD, "q03_r01.jpg"]
    assert near(image_colour(thumbs / "q03_r01.jpg"), "blue")
    report = run("search", "--index", index, "a red video", "-k", 1, "--json", "--thumbnails",
                 thumbs)
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(search_videos.rounded_for_print(report)))
    hit = printed["queries"][0]["hits"][0]
    assert "thumbnail" not in hit and hit["thumbnail_error"].startswith(f"{red} changed since")
    assert sorted(os.listdir(thumbs)) == [RECORD]  # the blue thumbnail of the last search: gone


# ----------------------------------------------------------------------------------------------
# Closed pipes, missing GPUs


@pytest.mark.parametrize("command", ["info", "search"])
def test_a_closed_pipe_ends_quietly(three_videos, command):
    """As `search_videos.py info | head -1` when head has gone: no BrokenPipeError traceback.
    The reader's end is closed before the program writes (it is still importing torch)."""
    argv = [sys.executable, str(REPO / "search_videos.py"), command, "--index",
            str(three_videos["index"])] + (["a red video"] if command == "search" else [])
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141  # 128 + SIGPIPE, as the shell reports `cat`'s
    assert err == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_search_on_cuda_without_a_gpu_says_so(three_videos, capsys):
    code, out, err = search_cli(capsys, "search", "--index", three_videos["index"],
                                "a red video", "--device", "cuda")
    assert (code, out) == (1, "")
    assert err == ("error: --device cuda: CUDA is not available on this machine (no GPU, or a "
                   "CPU-only build of torch); use --device cpu\n")


# ----------------------------------------------------------------------------------------------
# The index's model


def sha256(path):
    from clip_hitchhiker.downloads import sha256_file
    return sha256_file(path)


def other_colour_clip(path):
    """The colour CLIP with one more byte: another file, another digest, same embeddings."""
    search_synthetic.save_colour_clip(path)
    with open(path, "ab") as f:
        f.write(b"\0")
    return path


def test_a_moved_model_file_is_passed_to_search_by_its_digest(three_videos, tmp_path, capsys):
    model = tmp_path / "colour.pt"
    shutil.copy(three_videos["model"], model)
    index = tmp_path / "index"
    run("index", three_videos["root"] / "videos", "--index", index,
        "--model", model)
    expected = run("search", "--index", index, "a red video", "--json")
    moved = tmp_path / "models" / "colour.pt"
    moved.parent.mkdir()
    model.rename(moved)
    digest = sha256(moved)
    code, out, err = search_cli(capsys, "search", "--index", index, "a red video")
    assert code == 1 and err == (
        f"error: {index} was built with the model {model} (sha256:{digest}), and that file is "
        "not there now; if it moved, pass it where it is: search ... --model FILE\n")
    assert run("search", "--index", index, "a red video", "--json", "--model",
               moved)["queries"] == expected["queries"]
    other = other_colour_clip(tmp_path / "models" / "other.pt")
    code, out, err = search_cli(capsys, "search", "--index", index, "a red video", "--model",
                                other)
    assert code == 1 and err == (
        f"error: --model {other} (sha256:{sha256(other)}) is not the model {index} was built "
        f"with, {model} (sha256:{digest}); pass that model's file, or search an index built "
        "with this one\n")


def test_index_again_uses_the_indexs_own_model_and_refuses_another(three_videos, tmp_path,
                                                                   capsys, monkeypatch):
    import clip

    def no_download(*args, **kwargs):
        raise AssertionError(f"clip.load{args} would download")
    monkeypatch.setattr(clip, "load", no_download)
    truth, model = three_videos["truth"], three_videos["model"]
    videos, index = tmp_path / "videos", tmp_path / "index"
    copy_videos(truth, videos, ["red"])
    run("index", videos, "--index", index, "--model", model)
    copy_videos(truth, videos, ["green"])
    summary = run("index", videos, "--index", index)  # no --model: the index's own
    assert (summary["encoded"], summary["videos"]) == (1, 2)
    fresh = tmp_path / "fresh"
    run("index", videos, "--index", fresh, "--model", model)
    assert contents(index) == contents(fresh)
    other = other_colour_clip(tmp_path / "other.pt")
    for given, digest in ((other, sha256(other)), ("ViT-B/16", VIT_B16_SHA256)):
        code, err = cli_error(capsys, "index", videos, "--index", index, "--model", given,
                              "--device", "cpu")
        assert code == 1 and err == (
            f"error: {index} was built with the model {model} (sha256:{sha256(model)}); this "
            f"run has {given} (sha256:{digest}). Leave out --model to add to it with its own "
            "model, or index into another --index folder\n")
    # The same weights at another path are the same model: the index takes them.
    moved = tmp_path / "moved.pt"
    shutil.copy(model, moved)
    copy_videos(truth, videos, ["blue"])
    assert run("index", videos, "--index", index, "--model", moved)["encoded"] == 1


VIT_B16_SHA256 = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"


def contents(folder):
    from tests.test_search_videos import contents as index_contents
    return index_contents(folder)


# ----------------------------------------------------------------------------------------------
# open_clip given a path


@pytest.mark.parametrize("exists", [True, False])
def test_open_clip_keeps_a_checkpoint_path_as_given(tmp_path, monkeypatch, exists):
    pytest.importorskip("open_clip")
    from clip_hitchhiker.errors import ModelLoadError
    from clip_hitchhiker.models.backends import load_model

    monkeypatch.chdir(tmp_path)
    if exists:
        (tmp_path / "models").mkdir()
        search_synthetic.save_colour_clip(tmp_path / "models" / "colour.pt")
        message = ("--model models/colour.pt is a file; with --backend open_clip, --model names "
                   "the architecture (ViT-B-16, ...) and --pretrained the weights: --model "
                   "ARCHITECTURE --pretrained models/colour.pt")
    else:
        message = ("--model 'models/colour.pt' is not an open_clip architecture; run with "
                   "--list_models to see them")
    with pytest.raises(ModelLoadError) as error:
        load_model("open_clip", "models/colour.pt", torch.device("cpu"))
    assert str(error.value) == message


# ----------------------------------------------------------------------------------------------
# What a new user reads


def test_search_docs_say_what_index_downloads_and_how_to_use_a_local_file():
    """docs/search.md names the default model's download and cache folder as clip has them,
    and shows the local-file command (tests/test_docs.py parses it)."""
    import inspect

    import clip

    text = (REPO / "docs" / "search.md").read_text()
    args = search_videos.parse_args(["index", "videos", "--index", "my_index"])
    assert (args.backend, args.model) == (None, None)  # the index's own, else ViT-B/16:
    from clip_hitchhiker.search.index_model import index_run_model
    assert index_run_model("my_index", None)[:2] == ("clip", "ViT-B/16")
    assert "a new index is encoded with OpenAI's ViT-B/16" in text
    assert clip.clip._MODELS["ViT-B/16"] in text.replace("\n  ", "")
    download_root = inspect.signature(clip.load).parameters["download_root"]
    assert download_root.default is None and '"~/.cache/clip"' in inspect.getsource(clip.load)
    assert "into `~/.cache/clip` (`--download_root DIR`" in text
    assert "python search_videos.py index ~/Videos --index my_index --model " \
           "/path/to/ViT-B-16.pt" in text
