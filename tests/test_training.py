"""The finetuning recipe: its pieces against hand values, and the whole on synthetic colour
videos where only one frame in eight is relevant: it learns, query-scoring beats mean pooling,
a resumed run equals an uninterrupted one bit for bit, and two DDP ranks take the step one
process takes with the same global batch."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import train_msr_retrieval as train_module
from clip_hitchhiker.errors import ConfigError
from clip_hitchhiker.training import (DualEncoder, EpochSampler, build_optimizer,
                                      enable_vision_checkpointing, random_frame_indices,
                                      warmup_cosine)
from tests import synthetic

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Colour videos (one relevant frame in eight): 16 a colour to train on, 4 a colour for
    the resume and DDP runs, 1 a colour held out; and a tiny CLIP from random weights."""
    root = tmp_path_factory.mktemp("colours")
    synthetic.build_colour_videos(root, 16, relevant=1, name="train")
    synthetic.build_colour_videos(root, 4, relevant=1, seed=2, name="small")
    synthetic.build_colour_videos(root, 1, relevant=1, seed=1, name="heldout")
    synthetic.save_tiny_clip(root / "tiny.pt")
    return root


def train_argv(root, output, *extra, train="train"):
    return ["--output_dir", str(output), "--model", str(root / "tiny.pt"), "--train_csv",
            str(root / f"{train}.csv"), "--eval_csv", str(root / "heldout.csv"),
            "--video_root", str(root), "--num_frames", "8", "--lr_clip", "1e-3",
            "--lr_new", "1e-3", "--weight_decay", "0", "--device", "cpu", *map(str, extra)]


def train(root, output, *extra, train="train"):
    return train_module.main(train_module.parse_args(train_argv(root, output, *extra,
                                                                train=train)))


# ---------------------------------------------------------------- pieces

@pytest.mark.parametrize("n,f", [(10, 4), (3, 5), (100, 8), (1, 3)])
def test_random_frames_fall_in_their_segments(n, f):
    edges = np.linspace(0, n, f + 1).astype(int)
    seen = set()
    for seed in range(200):
        indices = random_frame_indices(n, f, np.random.default_rng(seed))
        for index, start, stop in zip(indices, edges[:-1], edges[1:]):
            assert start <= index < max(stop, start + 1) and index < n
        seen.add(tuple(indices))
    assert len(seen) > 1 or n < f  # random, unless every segment is a single frame


def test_sampler_shares_batches_and_resumes_mid_epoch():
    whole = list(EpochSampler(10, 4, seed=3))
    assert len(whole) == 8 and len(set(whole)) == 8  # 2 whole batches of 4, no repeats
    ranks = [list(EpochSampler(10, 4, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert ranks[0] == whole[0:2] + whole[4:6] and ranks[1] == whole[2:4] + whole[6:8]
    resumed = EpochSampler(10, 4, seed=3)
    resumed.set_position(0, 1)
    assert list(resumed) == whole[4:]
    resumed.set_position(1, 0)
    assert list(resumed) != whole  # another epoch, another order
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        EpochSampler(3, 4, seed=0)


def test_warmup_then_cosine():
    factor = warmup_cosine(2, 10)
    assert [factor(s) for s in (0, 1)] == [0.5, 1.0]
    assert factor(2) == 1.0 and factor(6) == pytest.approx(0.5) and factor(10) == 0.0
    assert factor(8) == pytest.approx(0.5 * (1 + math.cos(math.pi * 6 / 8)))


def test_optimizer_groups():
    model = DualEncoder(synthetic.tiny_clip(), 0.1, learn_temperature=True)
    optimizer = build_optimizer(model, 1e-7, 1e-4, 0.2)
    decay, no_decay, new = optimizer.param_groups
    assert (decay["lr"], decay["weight_decay"]) == (1e-7, 0.2)
    assert (no_decay["lr"], no_decay["weight_decay"]) == (1e-7, 0.0)
    assert new["params"] == [model.log_temperature] and new["lr"] == 1e-4
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any(p is model.clip.logit_scale for p in no_decay["params"])


def test_gradient_checkpointing_gives_the_same_gradients():
    frames = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointed in (False, True):
        model = synthetic.tiny_clip()
        if checkpointed:
            enable_vision_checkpointing(model)
        model.encode_image(frames).square().sum().backward()
        grads.append([p.grad.clone() for p in model.visual.parameters()])
    for plain, recomputed in zip(*grads):
        assert_close(recomputed, plain, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- the whole recipe

def test_it_learns_and_query_scoring_beats_mean_pooling(colours, tmp_path):
    # 8 of the 15 epochs' schedule (8 steps each): its learning rate is still high there, where
    # a schedule of 8 epochs has decayed before the model learns. Query-scoring's R1 is 100 from
    # step 40 on (seeds 2 and 3: 100 and 83 at step 64).
    history = train(colours, tmp_path / "run", "--batch_size", 24, "--epochs", 15,
                    "--max_steps", 64, "--num_workers", 2, "--eval_temperatures", 0.1)
    first, last = history[0]["results"], history[-1]["results"]
    chance = 100 / 12
    assert last[1]["aggregation"] == "query-scoring" and history[-1]["step"] == 64
    assert last[1]["t2v"]["R1"] >= 75 > 3 * chance  # far above chance
    assert last[1]["t2v"]["R1"] > last[0]["t2v"]["R1"]  # query-scoring beats mean pooling
    assert last[1]["t2v"]["R1"] > first[1]["t2v"]["R1"]  # and it got there by training
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 65))
    assert np.mean([r["loss"] for r in steps[-8:]]) < np.mean([r["loss"] for r in steps[:8]])
    assert sum("eval" in r for r in log) == 8


def test_resume_equals_an_uninterrupted_run_bit_for_bit(colours, tmp_path):
    common = ("--batch_size", 12, "--epochs", 2, "--num_workers", 0, "--warmup_fraction", 0.25)
    train(colours, tmp_path / "whole", *common, train="small")
    train(colours, tmp_path / "parts", *common, "--max_steps", 3, train="small")
    stopped = torch.load(tmp_path / "parts" / "last.pt", weights_only=True)
    assert (stopped["epoch"], stopped["batch_in_epoch"], stopped["trainer"]["step"]) == (0, 3, 3)
    train(colours, tmp_path / "parts", *common, "--resume", tmp_path / "parts" / "last.pt",
          train="small")
    whole, parts = (torch.load(tmp_path / d / "last.pt", weights_only=True)
                    for d in ("whole", "parts"))
    assert whole["trainer"]["step"] == parts["trainer"]["step"] == 8
    for name, tensor in whole["trainer"]["model"].items():
        assert torch.equal(tensor, parts["trainer"]["model"][name]), name
    for a, b in zip(whole["trainer"]["optimizer"]["state"].values(),
                    parts["trainer"]["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    losses = {d: [json.loads(line)["loss"] for line in
                  (tmp_path / d / "log.jsonl").read_text().splitlines() if '"loss"' in line]
              for d in ("whole", "parts")}
    assert losses["whole"] == losses["parts"]


def test_resume_refuses_other_settings(colours, tmp_path):
    common = ("--batch_size", 12, "--epochs", 2, "--num_workers", 0)
    train(colours, tmp_path / "run", *common, "--max_steps", 1, train="small")
    with pytest.raises(ConfigError, match="made with other settings: .*'batch_size': \\[12, 24\\]"
                                          "|made with other settings: .*batch_size"):
        train(colours, tmp_path / "run", "--batch_size", 24, "--epochs", 2, "--num_workers", 0,
              "--resume", tmp_path / "run" / "last.pt", train="small")


def test_two_ddp_ranks_take_the_step_of_one_process(colours, tmp_path):
    common = ["--batch_size", "8", "--epochs", "1", "--max_steps", "1", "--num_workers", "0"]
    argv = train_argv(colours, tmp_path / "ddp", *common, train="small")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", str(REPO / "train_msr_retrieval.py"), *argv],
                            capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    train(colours, tmp_path / "one", *common, train="small")
    ddp, one = (torch.load(tmp_path / d / "last.pt", weights_only=True)["trainer"]
                for d in ("ddp", "one"))
    # The same gradient: AdamW's first moment after one step is (1 - beta1) * gradient.
    gradients = {}
    for index, state in one["optimizer"]["state"].items():
        assert_close(ddp["optimizer"]["state"][index]["exp_avg"], state["exp_avg"], atol=1e-7,
                     rtol=1e-4)
        gradients[index] = state["exp_avg"] / 0.1
    # The same step, wherever the gradient is more than float noise (Adam's first step divides
    # each gradient by its own size, so noise-level gradients, such as those of the attention
    # key biases, which are zero in exact arithmetic, move by noise).
    # Optimiser state is indexed in the order of its parameter groups.
    reference = DualEncoder(synthetic.tiny_clip())
    name_of = {id(p): n for n, p in reference.named_parameters()}
    trainable = [name_of[id(p)] for group in build_optimizer(reference, 1, 1, 0).param_groups
                 for p in group["params"]]
    for index, name in enumerate(trainable):
        real = gradients[index].abs() > 1e-5
        assert_close(ddp["model"][name][real], one["model"][name][real], atol=1e-6, rtol=1e-5,
                     msg=name)
    initial = synthetic.tiny_clip().state_dict()
    moved = sum(not torch.equal(one["model"][n], initial[n[len("clip."):]]) for n in trainable)
    assert moved > 10  # the step changed the weights


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_accumulation_steps_run(colours, tmp_path, precision):
    history = train(colours, tmp_path / precision, "--batch_size", 12, "--epochs", 1,
                    "--max_steps", 2, "--num_workers", 0, "--precision", precision,
                    "--grad_accum", 2, "--grad_checkpointing", "--learn_qs_temperature",
                    "--preprocess_on", "device", train="small")
    log = [json.loads(line) for line in
           (tmp_path / precision / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    assert log[-1]["step"] == 2 and history[-1]["results"][0]["t2v"]["R1"] >= 0
    assert log[1]["qs_temperature"] != pytest.approx(0.1, abs=0)  # learnable: it moved


def msrvtt_argv(data_root, model, output, *extra):
    return ["--output_dir", str(output), "--model", str(model), "--data_root", str(data_root),
            "--msrvtt_url", "http://127.0.0.1:9/not-needed", "--num_frames", "4",
            "--epochs", "1", "--num_workers", "0", "--device", "cpu", *map(str, extra)]


def test_msrvtt_training_list_and_1k_a_evaluation(data_root, tiny_clip_files, tmp_path):
    # The synthetic MSR-VTT lists one training video (train_list_jsfusion.txt) with 3 captions;
    # a second one (a test video) gives the contrastive loss a negative.
    split_list = data_root / "MSRVTT" / "high-quality" / "structured-symlinks"
    with open(split_list / "train_list_jsfusion.txt", "a") as f:
        f.write("video7010\n")
    history = train_module.main(train_module.parse_args(msrvtt_argv(
        data_root, tiny_clip_files["torchscript"], tmp_path / "run", "--batch_size", 2)))
    assert history[-1]["step"] == 1
    assert [r["aggregation"] for r in history[-1]["results"]] == ["mean-pooling",
                                                                  "query-scoring"]
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 1 and "eval" in log[-1]


def test_training_through_open_clip(colours, tmp_path):
    pytest.importorskip("open_clip")
    argv = train_argv(colours, tmp_path / "run", "--batch_size", 12, "--epochs", 1,
                      "--max_steps", 2, "--num_workers", 0, train="small")
    model_at = argv.index("--model") + 1
    argv[model_at:model_at + 1] = ["ViT-B-16", "--backend", "open_clip", "--pretrained",
                                   argv[model_at]]
    history = train_module.main(train_module.parse_args(argv))
    assert history[-1]["step"] == 2
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
