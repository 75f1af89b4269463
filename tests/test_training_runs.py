"""The training CLI never loses or mixes a run: another run's files are refused or moved aside,
one run at a time in a folder, no temporary file outlives a kill (real subprocesses, real
signals, at the worst moment), a resume reuses its checkpoint's settings and never repeats a
logged step, bad settings are refused before any model is loaded, a divergence stops with one
line and keeps the last good checkpoint."""
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_msr_retrieval as train_module
from clip_hitchhiker.errors import ConfigError, DatasetError
from clip_hitchhiker.run_folder import FolderLock
from clip_hitchhiker.training import TrainingDiverged, trim_log
from tests import synthetic

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """48 colour videos (4 a colour) to train on, 12 held out, and a tiny CLIP."""
    root = tmp_path_factory.mktemp("videos")
    synthetic.build_colour_videos(root, 4, relevant=1, seed=2, name="small")
    synthetic.build_colour_videos(root, 1, relevant=1, seed=1, name="heldout")
    synthetic.save_tiny_clip(root / "tiny.pt")
    return root


def argv(root, output, *extra, train_csv=None, eval_csv=None):
    return ["--output_dir", str(output), "--model", str(root / "tiny.pt"),
            "--train_csv", str(train_csv or root / "small.csv"),
            "--eval_csv", str(eval_csv or root / "heldout.csv"), "--video_root", str(root),
            "--num_frames", "4", "--batch_size", "12", "--epochs", "1", "--lr_clip", "1e-3",
            "--lr_new", "1e-3", "--weight_decay", "0", "--num_workers", "0", "--device", "cpu",
            *map(str, extra)]


def train(*args_, **kwargs):
    return train_module.main(train_module.parse_args(argv(*args_, **kwargs)))


def log_records(folder):
    return [json.loads(line) for line in (Path(folder) / "log.jsonl").read_text().splitlines()]


def logged_steps(folder):
    return [r["step"] for r in log_records(folder) if "loss" in r]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: what is refused must be refused before it."""
    def load_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")
    monkeypatch.setattr(train_module, "load_model", load_model)


# ---------------------------------------------------------------- subprocesses and signals

# Runs the CLI with one function patched to signal readiness (touch argv[1]) and then hang,
# so that a signal lands exactly there.
PATCHED_CLI = """
import sys, time
from pathlib import Path
import torch
import train_msr_retrieval
from clip_hitchhiker.training import Trainer
ready = Path(sys.argv[1])
{patch}
train_msr_retrieval.cli(sys.argv[2:])
"""
HANG_IN_SAVE = """
real_save, saves = torch.save, []
def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)  # the temporary file is complete, not yet renamed
    saves.append(f)
    if len(saves) == {hang_at}:
        ready.touch()
        time.sleep(300)
torch.save = save
"""
HANG_IN_STEP = """
def train_step(self, *args, **kwargs):
    ready.touch()
    time.sleep(300)
Trainer.train_step = train_step
"""


def start_cli(patch, ready, cli_argv, **popen):
    process = subprocess.Popen(
        [sys.executable, "-c", PATCHED_CLI.format(patch=patch), str(ready), *cli_argv],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + 180
    while not Path(ready).exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended early: {process.communicate()[1][-3000:]}")
        assert time.monotonic() < deadline, "the run did not get ready"
        time.sleep(0.05)
    return process


def run_cli(cli_argv):
    return subprocess.run([sys.executable, str(REPO / "train_msr_retrieval.py"), *cli_argv],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


def last_line(stderr):
    """The last line a terminal shows (tqdm redraws its bar with carriage returns)."""
    return stderr.strip().splitlines()[-1].split("\r")[-1]


def temporary_files(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith(".last.pt."))


def test_sigterm_while_a_checkpoint_is_written_leaves_no_temporary_file(videos, tmp_path):
    run = tmp_path / "run"
    process = start_cli(HANG_IN_SAVE.format(hang_at=1), tmp_path / "ready",
                        argv(videos, run, "--save_every", 1, "--max_steps", 2))
    assert len(temporary_files(run)) == 1  # the worst moment: written, not yet in place
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    assert last_line(stderr) == "terminated: no checkpoint was written before it"
    assert temporary_files(run) == [] and not (run / "last.pt").exists()
    assert not (run / ".lock").exists()  # and the lock is released


def test_kill_9_while_a_checkpoint_is_written_then_resume(videos, tmp_path):
    """The kill leaves a temporary file (nothing can stop that) and a logged step 2 beyond the
    step-1 checkpoint: the resume removes the file, drops the record and takes step 2 again,
    once."""
    run = tmp_path / "run"
    process = start_cli(HANG_IN_SAVE.format(hang_at=2), tmp_path / "ready",
                        argv(videos, run, "--save_every", 1))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    left = temporary_files(run)
    assert len(left) == 1 and logged_steps(run) == [1, 2]
    assert torch.load(run / "last.pt", weights_only=True)["trainer"]["step"] == 1
    result = run_cli(argv(videos, run, "--resume", run / "last.pt"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"removed {run / left[0]} " in result.stderr
    assert f"{run / 'log.jsonl'}: dropped the records after step 1" in result.stderr
    assert temporary_files(run) == []
    assert logged_steps(run) == [1, 2, 3, 4]  # 48 videos, 12 a batch: no step twice


HANG_IN_EVALUATION = """
def evaluate_epoch(*args, **kwargs):
    ready.touch()
    time.sleep(300)
train_msr_retrieval.evaluate_epoch = evaluate_epoch
"""


def test_kill_9_while_evaluating_then_resume_evaluates_first(videos, tmp_path):
    run = tmp_path / "run"
    process = start_cli(HANG_IN_EVALUATION, tmp_path / "ready", argv(videos, run, "--epochs", 2))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert logged_steps(run) == [1, 2, 3, 4] and not any("eval" in r for r in log_records(run))
    history = train(videos, run, "--epochs", 2, "--resume", run / "last.pt")
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 4), (2, 8)]
    assert [(r["epoch"], r["step"]) for r in log_records(run) if "eval" in r] == [(1, 4), (2, 8)]
    assert logged_steps(run) == list(range(1, 9))


def test_a_finished_run_whose_last_evaluation_was_lost_is_not_finished():
    args = train_module.argparse.Namespace(resume="r/last.pt", epochs=2, max_steps=None)
    state = {"epoch": 2, "trainer": {"step": 8}, "evaluation_due": True}
    assert train_module.nothing_left(args, state, evaluated=False) is None
    assert "is a finished run" in train_module.nothing_left(args, state, evaluated=True)
    assert "is a finished run" in train_module.nothing_left(args, {**state, "evaluation_due":
                                                                   False}, evaluated=False)


def test_a_second_concurrent_run_is_refused_and_a_killed_runs_lock_does_not_block(videos,
                                                                                  tmp_path):
    run = tmp_path / "run"
    first = start_cli(HANG_IN_STEP, tmp_path / "ready", argv(videos, run))
    try:
        second = run_cli(argv(videos, run))  # the first has not written a file yet
        assert second.returncode == 1
        assert second.stderr.strip().startswith(
            f"error: --output_dir {run} is in use by another run: pid {first.pid} on ")
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    assert (run / ".lock").exists()  # the dead run's record stays ...
    history = train(videos, run, "--max_steps", 1)  # ... and blocks nothing
    assert history[-1]["step"] == 1 and logged_steps(run) == [1]


def test_sigint_prints_one_note(videos, tmp_path):
    run = tmp_path / "run"
    # As a terminal's Ctrl-C: the whole process group, data-loading worker included.
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train_msr_retrieval.py"),
         *argv(videos, run, "--save_every", 1, "--epochs", 50, "--num_workers", 1)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # A command started in the background (cmd &) without job control inherits SIGINT
        # ignored, and Python then leaves it ignored: the run finished and exited 0. A
        # terminal's Ctrl-C meets a process whose SIGINT has its default action.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 180
    while not (run / "last.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert last_line(stderr).startswith(f"interrupted: the last checkpoint, {run / 'last.pt'} "
                                        "(step ")
    assert last_line(stderr).endswith(f"is kept: --resume {run / 'last.pt'} continues it")
    assert temporary_files(run) == [] and not (run / ".lock").exists()


# ---------------------------------------------------------------- another run's files

def test_a_new_run_refuses_another_runs_files_and_overwrite_moves_them_aside(videos, tmp_path,
                                                                             monkeypatch):
    run = tmp_path / "run"
    train(videos, run, "--max_steps", 1)
    before = {name: (run / name).read_bytes() for name in ("last.pt", "log.jsonl")}
    with monkeypatch.context() as patched:
        patched.setattr(train_module, "load_model", lambda *a, **k: pytest.fail("loaded"))
        with pytest.raises(ConfigError, match=f"--output_dir {run} holds another run's last.pt "
                                              f"and log.jsonl; pass --resume {run / 'last.pt'} "
                                              "to continue it, or --overwrite"):
            train(videos, run, "--max_steps", 2)
    assert {name: (run / name).read_bytes() for name in before} == before
    history = train(videos, run, "--max_steps", 2, "--overwrite")
    assert history[-1]["step"] == 2 and logged_steps(run) == [1, 2]  # a log of its own
    aside = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1
    assert {name: (aside[0] / name).read_bytes() for name in before} == before  # kept whole


def test_a_log_alone_is_another_runs_too(videos, tmp_path, no_model):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="holds another run's log.jsonl"):
        train(videos, run)


def test_resume_into_another_runs_folder_is_refused(videos, tmp_path, no_model):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "log.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="holds another run's log.jsonl"):
        train_module.claim_output_dir(tmp_path / "other", tmp_path / "a" / "last.pt", False)


def test_the_lock_is_taken_before_anything_else_is_looked_at(videos, tmp_path, no_model):
    run = tmp_path / "run"
    with FolderLock(run):
        with pytest.raises(Exception, match=f"--output_dir {run} is in use by another run: pid "
                                            f"{os.getpid()}"):
            train(videos, run)


# ---------------------------------------------------------------- resume

def test_the_readmes_resume_command_after_a_bf16_learnable_temperature_run(videos, tmp_path,
                                                                         capsys):
    run = tmp_path / "run"
    train(videos, run, "--precision", "bf16", "--learn_qs_temperature", "--max_steps", 1,
          "--epochs", 2)
    readme = ["--output_dir", str(run), "--resume", str(run / "last.pt")]  # as written
    history = train_module.main(train_module.parse_args(readme))
    assert [h["step"] for h in history] == [4, 8] and logged_steps(run) == list(range(1, 9))
    saved = json.loads(torch.load(run / "last.pt", weights_only=True)["config"])
    assert (saved["precision"], saved["learn_qs_temperature"], saved["epochs"]) == ("bf16", True,
                                                                                   2)
    temperatures = [r["qs_temperature"] for r in log_records(run) if "loss" in r]
    assert len(set(temperatures)) == 8  # learnable, all along
    # Finished: it says so, and changes nothing.
    log_before = (run / "log.jsonl").read_bytes()
    capsys.readouterr()
    assert train_module.main(train_module.parse_args(readme)) == []
    assert capsys.readouterr().out == (
        f"{run / 'last.pt'} is a finished run: all 2 epochs done (8 steps; the evaluations are "
        f"in {run / 'log.jsonl'}); nothing to do. To train further, start a new run (another "
        "--output_dir, or --overwrite)\n")
    assert (run / "log.jsonl").read_bytes() == log_before


def test_resume_refuses_given_options_that_differ_naming_them(videos, tmp_path, no_model):
    run = tmp_path / "run"
    state = {"config": {**vars(train_module.parse_args(argv(videos, run, "--precision", "bf16"))),
                        "given": None}}
    args = train_module.parse_args(["--output_dir", str(run), "--resume", __file__,
                                    "--precision", "fp16", "--batch_size", "24", "--lr_clip",
                                    "1e-3", "--num_workers", "3"])
    with pytest.raises(ConfigError, match=r"--resume .* was made with other settings: "
                                          r"--batch_size 12 \(given: 24\), --precision bf16 "
                                          r"\(given: fp16\); leave --batch_size, --precision "
                                          "out to reuse"):
        train_module.resume_settings(args, state["config"])
    same = train_module.parse_args(["--output_dir", str(run), "--resume", __file__,
                                    "--precision", "bf16", "--num_workers", "3",
                                    "--max_steps", "7"])
    merged = train_module.resume_settings(same, state["config"])
    assert (merged.precision, merged.batch_size, merged.num_workers) == ("bf16", 12, 3)
    assert (merged.max_steps, merged.model) == (7, str(videos / "tiny.pt"))


def test_resume_at_max_steps_says_there_is_nothing_to_do(videos, tmp_path, capsys):
    run = tmp_path / "run"
    train(videos, run, "--max_steps", 2)
    capsys.readouterr()
    assert train(videos, run, "--max_steps", 2, "--resume", run / "last.pt") == []
    assert "is already at step 2, --max_steps 2; nothing to do" in capsys.readouterr().out


def test_a_step_logged_after_the_last_checkpoint_is_not_logged_twice(videos, tmp_path):
    run = tmp_path / "run"
    train(videos, run, "--max_steps", 2)
    at_step_2 = (run / "last.pt").read_bytes()
    train(videos, run, "--max_steps", 3, "--resume", run / "last.pt")
    (run / "last.pt").write_bytes(at_step_2)  # as if killed after logging step 3 ...
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 4, "epoch": 1, "lo')  # ... and in the middle of a record
    train(videos, run, "--resume", run / "last.pt")
    assert logged_steps(run) == [1, 2, 3, 4]
    assert [r["step"] for r in log_records(run) if "eval" in r] == [2, 4]


# ---------------------------------------------------------------- one epoch numbering

def test_epochs_are_counted_from_1_in_the_bar_the_printout_and_the_log(videos, tmp_path,
                                                                       capsys):
    run = tmp_path / "run"
    history = train(videos, run, "--batch_size", 24, "--epochs", 2)
    captured = capsys.readouterr()
    assert "epoch 1/2: " in captured.err and "epoch 2/2: " in captured.err
    assert "epoch 0" not in captured.err + captured.out
    printed = [line.split(":")[0] for line in captured.out.splitlines()]
    assert printed == ["epoch 1 step 2"] * 2 + ["epoch 2 step 4"] * 2  # two aggregations each
    records = log_records(run)
    assert [(r["epoch"], r["step"]) for r in records if "loss" in r] == [(1, 1), (1, 2), (2, 3),
                                                                        (2, 4)]
    assert [(r["epoch"], r["step"]) for r in records if "eval" in r] == [(1, 2), (2, 4)]
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 2), (2, 4)]


# ---------------------------------------------------------------- refused up front

def test_help_is_whole_sentences(capsys):
    with pytest.raises(SystemExit):
        train_module.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("Finetune CLIP on MSR-VTT's 9k training videos (or a CSV of your own) with "
            "query-scoring in the contrastive loss, and evaluate on 1k-A (or a CSV of your own) "
            "after each epoch.") in text


@pytest.mark.parametrize("batch,accum,world,message", [
    (1, 1, 1, "--batch_size 1 with --grad_accum 1 puts 1 video in each contrastive loss"),
    (4, 4, 1, "--batch_size 4 with --grad_accum 4 puts 1 video in each contrastive loss"),
    (3, 1, 2, "--batch_size 3 must be a multiple of the 2 ranks"),
    (6, 2, 2, "--batch_size 6 gives each of the 2 ranks 3 videos, which must be a multiple of "
              "--grad_accum 2"),
    (4, 2, 4, "--batch_size 4 gives each of the 4 ranks 1 videos, which must be a multiple"),
])
def test_a_batch_without_negatives_is_refused(batch, accum, world, message):
    with pytest.raises(ConfigError, match=message):
        train_module.check_batch(batch, accum, world)


def test_batches_with_negatives_pass():
    for batch, accum, world in [(2, 1, 1), (2, 1, 2), (8, 2, 2), (12, 3, 1)]:
        train_module.check_batch(batch, accum, world)


def test_batch_of_one_is_refused_before_any_model(videos, tmp_path, no_model):
    with pytest.raises(ConfigError, match="puts 1 video in each contrastive loss: it has no "
                                          "negative"):
        train(videos, tmp_path / "run", "--batch_size", 1)
    with pytest.raises(ConfigError, match="--batch_size 4 with --grad_accum 4 puts 1 video"):
        train(videos, tmp_path / "run", "--batch_size", 4, "--grad_accum", 4)


@pytest.mark.parametrize("option", ["train_csv", "eval_csv"])
@pytest.mark.parametrize("content,message", [
    (None, "{option} {path} does not exist"),
    ("folder", "{option} {path} is a folder, not a CSV file"),
    ("path,text\na.mp4,x\n", "{path} needs columns video_path and caption, missing"),
    ("video_path,caption\n", "{path} has no rows"),
])
def test_bad_csvs_are_refused_before_any_model(videos, tmp_path, no_model, option, content,
                                               message):
    path = tmp_path / "bad.csv"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DatasetError, match=message.format(option="--" + option, path=path)):
        train(videos, tmp_path / "run", **{option: path})


def trainer_options():
    """The options of the training CLI, from its --help."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        train_module.parse_args(["--help"])
    return set(re.findall(r"--\w+", out.getvalue()))


def assert_hint_names_trainer_options(message):
    named = set(re.findall(r"--\w+", message.split(";", 1)[1]))
    assert named and named <= trainer_options(), named


def test_missing_videos_are_counted_before_any_model(videos, tmp_path, no_model):
    bad_train = tmp_path / "bad_train.csv"
    bad_train.write_text((videos / "small.csv").read_text() + "gone/a.mp4,x\ngone/b.mp4,y\n")
    with pytest.raises(DatasetError, match=rf"2 of 50 training videos of {bad_train} are "
                                           rf"missing, e.g. \['{videos / 'gone/a.mp4'}', "
                                           rf"'{videos / 'gone/b.mp4'}'\]; fix --video_root ") as e:
        train(videos, tmp_path / "run", train_csv=bad_train)
    assert_hint_names_trainer_options(str(e.value))
    bad_eval = tmp_path / "bad_eval.csv"
    bad_eval.write_text((videos / "heldout.csv").read_text() + "gone/a.mp4,x\n")
    with pytest.raises(DatasetError, match=f"1 of 13 evaluation videos of {bad_eval} are "
                                           "missing"):
        train(videos, tmp_path / "run", eval_csv=bad_eval)


def test_missing_msrvtt_training_videos_are_counted_before_any_model(data_root, tmp_path,
                                                                      tiny_clip_files,
                                                                      no_model):
    (data_root / "MSRVTT" / "videos" / "all" / "video7015.mp4").unlink()  # the training video
    with pytest.raises(DatasetError, match=r"1 of 1 MSR-VTT training videos are missing, e\.g\. "
                                           r".*video7015\.mp4'\]; point --data_root at the "
                                           "folder that holds a complete MSRVTT/") as e:
        train_module.main(train_module.parse_args([
            "--output_dir", str(tmp_path / "run"), "--model", str(tiny_clip_files["torchscript"]),
            "--data_root", str(data_root), "--msrvtt_url", "http://127.0.0.1:9/not-needed",
            "--batch_size", "2", "--device", "cpu"]))
    assert_hint_names_trainer_options(str(e.value))


@pytest.mark.parametrize("kind", ["under a file", "a file"])
def test_an_output_dir_that_cannot_be_written_is_refused_before_any_model(videos, tmp_path,
                                                                          no_model, kind):
    (tmp_path / "file").write_text("")
    output = tmp_path / "file" / "run" if kind == "under a file" else tmp_path / "file"
    with pytest.raises(ConfigError, match=f"--output_dir {output} cannot be written: "):
        train(videos, output)


# ---------------------------------------------------------------- divergence

def test_divergence_stops_at_its_step_naming_the_learning_rates(videos, tmp_path):
    run = tmp_path / "run"
    # Adam's first step moves every weight by the learning rate: the logit scale's logarithm
    # by 1e10, so its exp is inf or 0 after step 1.
    with pytest.raises(TrainingDiverged) as caught:
        train(videos, run, "--lr_clip", 1e10, "--warmup_fraction", 0, "--save_every", 1)
    assert str(caught.value).startswith("training diverged at step 1: the logit scale is ")
    assert str(caught.value).endswith(
        "(learning rates at this step: CLIP 1e+10, new parameters 0.001); no checkpoint was "
        "written before it; lower --lr_clip or --lr_new (or use --precision fp32) in a new run "
        "(--overwrite moves this one aside)")
    assert not (run / "last.pt").exists() and not (run / "log.jsonl").exists()


def test_divergence_keeps_the_last_good_checkpoint_and_prints_one_line(videos, tmp_path):
    run = tmp_path / "run"
    train(videos, run, "--max_steps", 1, "--save_every", 1)
    state = torch.load(run / "last.pt", weights_only=True)
    # The schedule from step 2 on, as one that runs away would be: learning rate 1e10.
    for group in state["trainer"]["optimizer"]["param_groups"]:
        group["lr"] = 1e10
    state["trainer"]["scheduler"]["base_lrs"] = [1e10] * 3
    torch.save(state, run / "last.pt")
    good = (run / "last.pt").read_bytes()
    result = run_cli(argv(videos, run, "--resume", run / "last.pt", "--save_every", 1))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = last_line(result.stderr)
    assert line.startswith("error: training diverged at step 2: the logit scale is ")
    assert line.endswith(f"(learning rates at this step: CLIP 1e+10, new parameters 1e+10); the "
                         f"last good checkpoint, {run / 'last.pt'} (step 1), is kept; lower "
                         "--lr_clip or --lr_new (or use --precision fp32) in a new run "
                         "(--overwrite moves this one aside)")
    assert_hint_names_trainer_options(line)
    assert (run / "last.pt").read_bytes() == good and logged_steps(run) == [1]


def test_trim_log_keeps_what_the_checkpoint_covers(tmp_path):
    log = tmp_path / "log.jsonl"
    records = ['{"step": 1, "loss": 2}', '{"eval": [], "step": 1}', '{"step": 2, "loss": 1}']
    log.write_text("\n".join(records) + "\n")
    assert trim_log(log, 2) == 0 and log.read_text() == "\n".join(records) + "\n"
    log.write_text("\n".join(records))  # complete, but a kill took the last newline
    assert trim_log(log, 2) == 0 and log.read_text() == "\n".join(records) + "\n"
    log.write_text("\n".join(records) + '\n{"step": 3, "lo')
    assert trim_log(log, 1) == 2
    assert log.read_text() == "\n".join(records[:2]) + "\n"
