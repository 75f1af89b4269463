"""python -m clip_hitchhiker.demo: the README's one-minute try-out, run as a user runs it."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import run_msr_retrieval
import search_videos
from clip_hitchhiker import demo
from clip_hitchhiker.errors import ConfigError

# One pytest-xdist worker runs them all, so that the demo (the module fixture) runs once.
pytestmark = pytest.mark.xdist_group("demo")
REPO = Path(__file__).resolve().parent.parent
THUMBNAILS_RECORD = ".clip-hitchhiker-thumbnails.json"  # docs/search.md


def installed_like_env(home, tmp):
    """As an installed copy runs: the repository importable, but neither the current folder
    nor PATH holds its scripts."""
    return {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(home),
            "TMPDIR": str(tmp)}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The README's command, in a fresh folder, with only the repository on the path.
    returns: (the folder it wrote, its stdout, the folder it ran in, its environment)."""
    cwd, home, tmp = (tmp_path_factory.mktemp(name) for name in ("demo", "home", "tmp"))
    env = installed_like_env(home, tmp)
    result = subprocess.run([sys.executable, "-m", "clip_hitchhiker.demo"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = re.search(r"^\[1/4\] building .* in (\S+) \(a temporary folder; --out DIR writes "
                       r"where you choose\) \.\.\.$", result.stdout, re.M).group(1)
    return Path(folder), result.stdout, cwd, env


def test_the_demo_writes_into_the_folder_it_names_not_the_current_one(demo_run):
    folder, _, cwd, env = demo_run
    assert os.listdir(cwd) == []
    assert folder.parent == Path(env["TMPDIR"]) and folder.name.startswith("hitchhiker-demo-")
    assert (folder / demo.MARKER).is_file()


def test_the_printed_search_commands_run_where_the_demo_ran(demo_run):
    folder, stdout, cwd, env = demo_run
    lines = stdout.splitlines()
    commands = lines[lines.index("[3/4] a search index of the videos, and a search:") + 1:][:2]
    python = shlex.quote(demo._python(lambda name: shutil.which(name, path=env["PATH"])))
    assert commands[0].startswith(f"{python} -m search_videos index ")
    assert commands[1].startswith(f"{python} -m search_videos search ")
    # The search as printed, in the demo's folder and environment (the index command has the
    # same prefix: its arguments are run here, in this process, to save a start-up).
    result = subprocess.run(commands[1], shell=True, cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("query: a ") == 2
    assert os.listdir(cwd) == []
    summary = search_videos.main(search_videos.parse_args(shlex.split(commands[0])[3:]))
    assert (summary["encoded"], summary["up_to_date"]) == (0, 12)


def test_commands_are_the_checkouts_scripts_there_else_the_installed_ones(tmp_path):
    assert demo._python(lambda name: sys.executable) == "python"
    no_path = lambda name: None  # noqa: E731
    assert demo._python(no_path) == sys.executable
    assert demo.command_line("search_videos", ["info", "--index", "a b"], cwd=REPO,
                             which=no_path) == f"{shlex.quote(sys.executable)} search_videos.py " \
                                               "info --index 'a b'"
    assert demo.command_line("search_videos", ["info"], cwd=tmp_path, which=no_path) == \
        f"{shlex.quote(sys.executable)} -m search_videos info"
    script = tmp_path / "search-videos"
    script.write_text(f"#!{sys.executable}\nimport search_videos\n")
    installed = lambda name: str(script) if name == "search-videos" else None  # noqa: E731
    assert demo.command_line("search_videos", ["info"], cwd=tmp_path,
                             which=installed) == "search-videos info"
    script.write_text("#!/usr/bin/python2\n")  # another Python's: not this one's copy
    assert demo.command_line("search_videos", ["info"], cwd=tmp_path,
                             which=installed).endswith(" -m search_videos info")


def test_demo_runs_every_stage_and_says_the_figures_are_meaningless(demo_run):
    folder, stdout, _, _ = demo_run
    lines = stdout.splitlines()
    assert lines[0].startswith("The model's weights are random, so every figure below is "
                               "meaningless")
    assert lines[-1].startswith("The model's weights are random, so every figure above")
    report = json.loads((folder / "report.json").read_text())
    labels = [(r["aggregation"], r["temperature"]) for r in report["results"]]
    assert labels == [("mean-pooling", None), ("query-scoring", 0.01), ("query-scoring", 0.1),
                      ("query-scoring", 1.0)]
    assert report["counts"]["queries"] == 12 and report["counts"]["decoded_videos"] == 12
    assert report["bootstrap"] is not None
    assert (folder / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    thumbnails = sorted(p.name for p in (folder / "thumbnails").iterdir())
    assert thumbnails == [THUMBNAILS_RECORD] + [
        f"q0{q}_r0{r}.jpg" for q in (1, 2) for r in (1, 2, 3)]  # 2 queries, 3 hits each
    assert stdout.count("query: a ") == 2
    for path in (folder / "videos" / "clips.csv", folder / "tiny_random_clip.pt",
                 folder / "report.json", folder / "sweep.png", folder / "index",
                 folder / "thumbnails"):
        assert f" {path}" in stdout  # printed where the outputs are


def test_the_search_index_holds_every_demo_video_at_its_frame_rate(demo_run):
    folder, _, _, _ = demo_run
    info = search_videos.main(search_videos.parse_args(["info", "--index",
                                                        str(folder / "index"), "--verify"]))
    # 16 frames at 10 fps: 1.6 s, sampled at 5 fps -> 8 frames each.
    assert (info["num_videos"], info["num_frames"]) == (12, 96)
    assert all(video["frames"] == 8 for video in info["videos"])


def test_the_printed_command_reproduces_the_demo(demo_run):
    """The evaluator line the demo prints is what it ran: run by hand, it finds the demo's
    cache and prints the same metrics."""
    folder, stdout, _, _ = demo_run
    command = next(line for line in stdout.splitlines()
                   if line.startswith(f"{shlex.quote(sys.executable)} -m run_msr_retrieval "))
    argv = shlex.split(command)[3:]
    # The last --output_json wins: the demo's own report stays as it was.
    again = run_msr_retrieval.main(run_msr_retrieval.parse_args(
        argv + ["--output_json", str(folder.parent / "again.json")]))
    first = json.loads((folder / "report.json").read_text())
    assert again["cache"]["hit"]
    assert [r["t2v"] for r in again["results"]] == [r["t2v"] for r in first["results"]]


def test_a_second_demo_replaces_only_a_demo_folder(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and was not made by the demo"):
        demo.claim_output_dir(theirs)
    assert (theirs / "notes.txt").read_text() == "mine"
    ours = demo.claim_output_dir(tmp_path / "ours")
    (ours / "old.json").write_text("{}")
    assert demo.claim_output_dir(ours) == ours
    assert sorted(p.name for p in ours.iterdir()) == [demo.MARKER]
