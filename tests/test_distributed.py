"""torchrun on the CPU (gloo): sharded encoding equals the single-process run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import run_msr_retrieval as cli_module
from tests import synthetic

REPO = Path(__file__).resolve().parent.parent


def torchrun(tmp_path, data_root, model, *extra, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(REPO / "run_msr_retrieval.py"),
           *synthetic.cli_argv(tmp_path, data_root, model, *extra)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def single(tmp_path, data_root, model, *extra):
    return cli_module.main(cli_module.parse_args(synthetic.cli_argv(tmp_path, data_root, model,
                                                                    *extra)))


def metric_lines(text):
    return [line for line in text.splitlines() if "  agg: " in line]


# 5 videos on 3 ranks: uneven shards (2, 2, 1); 6 on 2: even ones.
@pytest.mark.parametrize("split,num_videos,nproc", [("jsfusion", 5, 3), ("full-test", 6, 2)])
def test_ranks_equal_single_process(tmp_path, data_root, tiny_clip_files, capsys, split,
                                    num_videos, nproc):
    model = tiny_clip_files["torchscript"]
    result = torchrun(tmp_path, data_root, model, "--split", split, "--no_cache",
                      "--save_embeddings", tmp_path / "dist.pt", nproc=nproc)
    assert result.returncode == 0, result.stderr[-3000:]
    single(tmp_path, data_root, model, "--split", split, "--no_cache", "--save_embeddings",
           tmp_path / "single.pt")
    distributed, alone = (torch.load(tmp_path / n, weights_only=True)
                          for n in ("dist.pt", "single.pt"))
    assert len(distributed["video_ids"]) == num_videos  # odd (5) and even (6) counts
    for name in ("video_ids", "query_video_ids", "captions", "skipped"):
        assert distributed[name] == alone[name]
    assert_close(distributed["video_embeds"], alone["video_embeds"], atol=1e-5, rtol=0)
    assert_close(distributed["text_embeds"], alone["text_embeds"], atol=1e-5, rtol=0)
    assert metric_lines(result.stdout) == metric_lines(capsys.readouterr().out)
    assert len(metric_lines(result.stdout)) == 2  # printed once, by rank 0 alone


def test_cache_shared_between_distributed_and_single(tmp_path, data_root, tiny_clip_files):
    model = tiny_clip_files["torchscript"]
    result = torchrun(tmp_path, data_root, model)
    assert result.returncode == 0, result.stderr[-3000:]
    report = single(tmp_path, data_root, model, "--query_scoring_temp", "0.5")
    assert report["cache"]["hit"] and report["counts"]["decoded_videos"] == 0
    # And the other way round: a single-process cache serves a distributed run.
    single(tmp_path, data_root, model, "--num_frames", "3")
    again = torchrun(tmp_path, data_root, model, "--num_frames", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "loaded from cache" in again.stdout


def test_error_on_one_rank_stops_all(tmp_path, data_root, tiny_clip_files):
    # video7014 is the last of 5 jsfusion videos: in rank 1's shard.
    (data_root / "MSRVTT" / "videos" / "all" / "video7014.mp4").write_bytes(b"corrupt")
    result = torchrun(tmp_path, data_root, tiny_clip_files["torchscript"], "--no_cache")
    assert result.returncode != 0
    assert "video7014.mp4" in result.stderr
    assert "rank 1: VideoDecodeError" in result.stderr  # rank 0 reports the other rank's error
    assert metric_lines(result.stdout) == []
