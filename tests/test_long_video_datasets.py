"""Charades (classification, mAP) and ActivityNet Captions (paragraph-to-video retrieval) on
synthetic data in the real formats, downloaded from 127.0.0.1 where the real ones are."""
import json
import re

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import run_msr_retrieval as cli_module
from clip_hitchhiker.models.backends import load_model
from clip_hitchhiker.datasets.charades import charades_map
from clip_hitchhiker.errors import DatasetError
from query_scoring import similarity_meanpooling, similarity_queryscoring
from tests import synthetic

CPU = torch.device("cpu")


def slow_average_precision(scores, positives):
    """The definition, one class: precision at each positive's rank (stable descending)."""
    order = sorted(range(len(scores)), key=lambda v: -scores[v])
    hits, precisions = 0, []
    for rank, video in enumerate(order, start=1):
        if positives[video]:
            hits += 1
            precisions.append(hits / rank)
    return 100 * float(np.mean(precisions)) if precisions else float("nan")


def official_average_precision(scores, positives, labelled):
    """Charades_v1_classify.m, one class, transcribed: every row starts at -inf and only the
    rows of videos with a label get their scores; then precision at each positive's rank."""
    filled = [s if has_label else -np.inf for s, has_label in zip(scores, labelled)]
    return slow_average_precision(filled, positives)


def test_map_hand_computed():
    # Positives at ranks 1 and 3: (1/1 + 2/3) / 2.
    # Class 0's positives at ranks 1 and 3: (1/1 + 2/3) / 2; class 1's at ranks 1 and 2.
    mean_ap, per_class = charades_map(np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.9, 0.2, 0.8]]),
                                      np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=bool))
    assert per_class[0] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert per_class[1] == pytest.approx(100.0)
    assert mean_ap == pytest.approx((per_class[0] + 100) / 2)


def test_map_does_not_rank_unlabelled_videos_by_hand():
    # Videos U1, v1 (class 0), v2 (class 1), v3 (class 0), U2; U1 and U2 carry no label.
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.1],     # class 0: U1 first, then v1, v2, v3
                       [0.1, 0.5, 0.9, 0.2, 0.95]])   # class 1: U2 first, then v2
    labels = np.array([[0, 0], [1, 0], [0, 1], [1, 0], [0, 0]], dtype=bool)
    mean_ap, per_class = charades_map(scores, labels)
    # Official: class 0 ranks v1 (hit), v2, v3 (hit): (1/1 + 2/3) / 2; class 1 ranks v2 first.
    # (Ranking U1 and U2 among the negatives would give (1/2 + 2/4) / 2 and 1/2: mAP 50.)
    assert per_class[0] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert per_class[1] == pytest.approx(100.0)
    assert mean_ap == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2)


def test_map_equals_the_official_script_with_ties_unlabelled_videos_and_an_empty_class():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((6, 40)), 1)  # rounded: many ties
    labels = rng.random((40, 6)) < 0.2
    labels[:, 4] = False  # a class with no positive video
    labels[[3, 17, 29]] = False  # videos with no label, scored like any other
    labelled = labels.any(axis=1)
    mean_ap, per_class = charades_map(torch.tensor(scores), labels)
    expected = [official_average_precision(scores[c], labels[:, c], labelled) for c in range(6)]
    assert np.isnan(per_class[4]) and np.isnan(expected[4])
    assert_close(torch.tensor(np.delete(per_class, 4)), torch.tensor(np.delete(expected, 4)))
    assert mean_ap == pytest.approx(np.nanmean(expected))


def test_map_needs_a_positive():
    with pytest.raises(ValueError, match="no class has a positive video"):
        charades_map(np.zeros((2, 3)), np.zeros((3, 2), dtype=bool))


@pytest.fixture(scope="module")
def charades_servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("charades_source")
    info = synthetic.build_charades(root)
    annotations = synthetic.zip_bytes(root / "Charades")
    videos = synthetic.zip_bytes(root / "Charades_v1_480")
    with synthetic.FileServer(annotations) as a, synthetic.FileServer(videos) as v:
        yield a.url, v.url, info


def test_charades_end_to_end(tmp_path, tiny_clip_files, charades_servers, capsys):
    annotations_url, videos_url, info = charades_servers
    argv = ["--dataset", "charades", "--data_root", tmp_path / "data", "--charades_url",
            videos_url, "--charades_annotations_url", annotations_url, "--prompt",
            "a video of a person {}", "--prompt", "{}", "--query_scoring_temp", "0.1", "1.0",
            "--save_embeddings", tmp_path / "e.pt", "--output_json", tmp_path / "r.json"]
    argv = _drop_option(synthetic.cli_argv(tmp_path, "unused", tiny_clip_files["torchscript"],
                                           *argv), "--data_root", keep_last=True)
    report = cli_module.main(cli_module.parse_args(argv))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("encoded 5 videos (20 frames)")
    assert all(re.fullmatch(r"\{'mAP': \d+\.\d\}  agg: .*", line) for line in lines[1:]), lines
    # Recompute from the saved embeddings with the definition.
    content = torch.load(tmp_path / "e.pt", weights_only=True)
    assert content["task"] == "classification" and content["captions"] == \
        synthetic.CHARADES_CLASSES
    assert content["labels"] == info["labels"]
    model = load_model("clip", str(tiny_clip_files["torchscript"]), CPU)
    with torch.inference_mode():
        for c, name in enumerate(synthetic.CHARADES_CLASSES):
            prompts = model.encode_text([f"a video of a person {name}", name], CPU)
            unit = prompts / prompts.norm(dim=1, keepdim=True)
            assert_close(content["text_embeds"][c], unit.mean(0), atol=1e-6, rtol=0)
    labels = np.array([[c in info["labels"][v] for c in range(4)] for v in content["video_ids"]])
    labelled = labels.any(axis=1)
    assert report["counts"]["unlabelled_videos"] == 1  # AB003
    text, video = content["text_embeds"], content["video_embeds"]
    for result, sims in zip(report["results"], [similarity_meanpooling(text, video)] + [
            similarity_queryscoring(text, video, t) for t in (0.1, 1.0)]):
        expected = [official_average_precision(sims[c].tolist(), labels[:, c], labelled)
                    for c in range(4)]
        assert result["mAP"] == pytest.approx(np.nanmean(expected), abs=1e-9)
        assert result["per_class_AP"]["Sitting on a chair"] is None  # no positive video
    assert lines[1] == f"{{'mAP': {round(report['results'][0]['mAP'], 1)}}}  agg: mean-pooling"
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["results"][1]["per_class_AP"] == report["results"][1]["per_class_AP"]
    # The downloads are complete: a second run asks no server (cache hit, nothing decoded).
    again = cli_module.main(cli_module.parse_args(_replace(argv, {"--charades_url":
                                                                  "http://127.0.0.1:9/x"})))
    assert again["cache"]["hit"] and again["results"] == report["results"]


def _drop_option(argv, option, keep_last):
    positions = [i for i, a in enumerate(argv) if a == option]
    for i in reversed(positions[:-1] if keep_last else positions):
        del argv[i:i + 2]
    return argv


def _replace(argv, values):
    argv = list(argv)
    for option, value in values.items():
        argv[argv.index(option) + 1] = value
    return argv


@pytest.fixture
def activitynet(tmp_path):
    synthetic.build_activitynet(tmp_path / "captions", tmp_path / "videos")
    with synthetic.FileServer(synthetic.zip_contents(tmp_path / "captions")) as server:
        yield server.url


def activitynet_argv(tmp_path, model, url, *extra):
    argv = synthetic.cli_argv(tmp_path, tmp_path / "data", model, "--dataset", "activitynet",
                              "--video_root", tmp_path / "videos", "--activitynet_url", url,
                              *extra)
    return _drop_option(argv, "--data_root", keep_last=True)


def test_activitynet_missing_videos_stop_the_run(tmp_path, tiny_clip_files, activitynet):
    with pytest.raises(DatasetError, match=r"1 of 4 videos of val_1 are missing from .*videos, "
                                           r"e.g. \['v_ddd'\].*--skip_bad_videos"):
        cli_module.main(cli_module.parse_args(activitynet_argv(
            tmp_path, tiny_clip_files["torchscript"], activitynet)))


@pytest.mark.parametrize("paragraph", ["concat", "mean"])
def test_activitynet_paragraphs(tmp_path, tiny_clip_files, activitynet, paragraph, capsys):
    report = cli_module.main(cli_module.parse_args(activitynet_argv(
        tmp_path, tiny_clip_files["torchscript"], activitynet, "--skip_bad_videos",
        "--paragraph", paragraph, "--save_embeddings", tmp_path / "e.pt")))
    captured = capsys.readouterr()
    assert "1 of 4 videos are missing from" in captured.err
    assert all(line.endswith("[partial: 1 bad video(s) and 1 queries left out, not comparable "
                             "with the benchmark]") for line in captured.out.splitlines()[1:])
    content = torch.load(tmp_path / "e.pt", weights_only=True)
    assert content["video_ids"] == ["v_aaa", "v_bbb", "v_ccc"]
    assert content["captions"][0] == "A woman runs. Then she jumps."  # timestamp order
    assert content["captions"][2] == "first second third and last"
    model = load_model("clip", str(tiny_clip_files["torchscript"]), CPU)
    with torch.inference_mode():
        if paragraph == "concat":
            expected = model.encode_text(content["captions"], CPU)
        else:
            sentences = [["A woman runs.", "Then she jumps."], ["A dog swims."],
                         ["first", "second", "third and last"], ["Missing video."]]
            expected = []
            for group in sentences:
                embeds = model.encode_text(group, CPU)
                expected.append((embeds / embeds.norm(dim=1, keepdim=True)).mean(0))
            expected = torch.stack(expected)
    assert_close(content["text_embeds"], expected.float(), atol=1e-6, rtol=0)
    text, video = content["text_embeds"][:3], content["video_embeds"]
    # By the definition: a query's rank is 1 + the videos scored strictly above its own.
    sims = similarity_queryscoring(text, video, 0.1)
    ranks = [1 + int((row > row[q]).sum()) for q, row in enumerate(sims)]
    t2v = report["results"][1]["t2v"]
    assert t2v["R1"] == pytest.approx(100 * np.mean([r == 1 for r in ranks]))
    assert t2v["MedR"] == np.median(ranks) and t2v["MeanR"] == pytest.approx(np.mean(ranks))
    assert report["counts"]["skipped_videos"] == 1


def test_activitynet_needs_a_video_root(tmp_path, tiny_clip_files, activitynet):
    argv = _drop_option(activitynet_argv(tmp_path, tiny_clip_files["torchscript"], activitynet),
                        "--video_root", keep_last=False)
    with pytest.raises(DatasetError, match="pass --video_root"):
        cli_module.main(cli_module.parse_args(argv))


@pytest.mark.parametrize("argv,message", [
    (["--dataset", "charades", "--split", "jsfusion"], "--split for charades must be one of"),
    (["--prompt", "a {}"], "--prompt is for --dataset charades"),
    (["--dataset", "charades", "--prompt", "no slot"], "must hold exactly one {}"),
    (["--dataset", "charades", "--bootstrap", "10"], "Charades reports mAP"),
    (["--dataset", "csv"], "--dataset csv needs --csv FILE"),
    (["--dataset", "activitynet", "--csv", "x.csv"], "--csv is for your own videos")])
def test_dataset_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli_module.parse_args(argv)
    assert message in capsys.readouterr().err


def test_charades_under_torchrun_equals_one_process(tmp_path, tiny_clip_files, charades_servers):
    import os
    import subprocess
    import sys
    from pathlib import Path
    annotations_url, videos_url, _ = charades_servers
    argv = _drop_option(synthetic.cli_argv(
        tmp_path, "unused", tiny_clip_files["torchscript"], "--dataset", "charades",
        "--data_root", tmp_path / "data", "--charades_url", videos_url,
        "--charades_annotations_url", annotations_url, "--no_cache"), "--data_root",
        keep_last=True)
    one = cli_module.main(cli_module.parse_args(argv + ["--output_json",
                                                        str(tmp_path / "one.json")]))
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(repo / "run_msr_retrieval.py"), *argv, "--output_json", str(tmp_path / "two.json")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["world_size"] == 2
    for a, b in zip(one["results"], two["results"]):
        assert b["mAP"] == pytest.approx(a["mAP"], abs=1e-6)


def test_charades_counts_long_prompts_and_guards_its_folders(tmp_path, tiny_clip_files,
                                                             charades_servers, capsys):
    from clip_hitchhiker.errors import ConfigError
    annotations_url, videos_url, _ = charades_servers
    argv = _drop_option(synthetic.cli_argv(
        tmp_path, "unused", tiny_clip_files["torchscript"], "--dataset", "charades",
        "--data_root", tmp_path / "data", "--charades_url", videos_url,
        "--charades_annotations_url", annotations_url, "--prompt",
        "{} " + " ".join(["again"] * 80)), "--data_root", keep_last=True)
    report = cli_module.main(cli_module.parse_args(argv))
    # The prompts filled with the class names are what is encoded, and all 4 are cut.
    assert report["counts"]["truncated_captions"] == 4
    assert "4 caption(s) are longer than the model's 77-token context" in capsys.readouterr().err
    inside = tmp_path / "data" / "Charades_v1_480" / "out.json"
    with pytest.raises(ConfigError, match="--output_json .*out.json lies inside a dataset folder"):
        cli_module.main(cli_module.parse_args(argv + ["--output_json", str(inside)]))
