"""python -m clip_hitchhiker.demo: the README's one-minute try-out, run as a user runs it."""
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import run_msr_retrieval
import search_videos
from clip_hitchhiker import demo
from clip_hitchhiker.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The README's command, in a fresh folder, with only the repository on the path."""
    cwd = tmp_path_factory.mktemp("demo")
    result = subprocess.run([sys.executable, "-m", "clip_hitchhiker.demo"], cwd=cwd,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                 "HOME": str(cwd)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "hitchhiker-demo", result.stdout


def test_demo_runs_every_stage_and_says_the_figures_are_meaningless(demo_run):
    folder, stdout = demo_run
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
    assert sorted(p.name for p in (folder / "thumbnails").iterdir()) == [
        f"q0{q}_r0{r}.jpg" for q in (1, 2) for r in (1, 2, 3)]  # 2 queries, 3 hits each
    assert stdout.count("query: a ") == 2
    for path in (folder / "videos" / "clips.csv", folder / "tiny_random_clip.pt",
                 folder / "report.json", folder / "sweep.png", folder / "index",
                 folder / "thumbnails"):
        assert f" {path}" in stdout  # printed where the outputs are


def test_the_search_index_holds_every_demo_video_at_its_frame_rate(demo_run):
    folder, _ = demo_run
    info = search_videos.main(search_videos.parse_args(["info", "--index",
                                                        str(folder / "index"), "--verify"]))
    # 16 frames at 10 fps: 1.6 s, sampled at 5 fps -> 8 frames each.
    assert (info["num_videos"], info["num_frames"]) == (12, 96)
    assert all(video["frames"] == 8 for video in info["videos"])


def test_the_printed_command_reproduces_the_demo(demo_run):
    """The evaluator line the demo prints is what it ran: run by hand, it finds the demo's
    cache and prints the same metrics."""
    folder, stdout = demo_run
    command = next(line for line in stdout.splitlines()
                   if line.startswith("python run_msr_retrieval.py "))
    argv = shlex.split(command)[2:]
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
