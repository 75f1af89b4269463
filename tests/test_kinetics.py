"""Kinetics-400 zero-shot classification: top-1, top-5 and mean class accuracy against a
transcription of mmaction2's functions and against brute force over every small tie pattern;
the loader and the evaluator end to end on a synthetic val.csv served from 127.0.0.1."""
import itertools
import re

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import run_msr_retrieval as cli_module
from clip_hitchhiker.datasets.kinetics import (CLIP_KINETICS_TEMPLATES, kinetics_accuracy,
                                               kinetics_video_id)
from clip_hitchhiker.errors import DatasetError
from clip_hitchhiker.models.backends import load_model
from query_scoring import similarity_meanpooling, similarity_queryscoring
from tests import dataset_synthetic as data
from tests import synthetic

CPU = torch.device("cpu")

# openai/CLIP, data/prompts.md, "Kinetics700" templates, as written there.
CLIP_PROMPTS_MD = [
    'a photo of {}.', 'a photo of a person {}.', 'a photo of a person using {}.',
    'a photo of a person doing {}.', 'a photo of a person during {}.',
    'a photo of a person performing {}.', 'a photo of a person practicing {}.',
    'a video of {}.', 'a video of a person {}.', 'a video of a person using {}.',
    'a video of a person doing {}.', 'a video of a person during {}.',
    'a video of a person performing {}.', 'a video of a person practicing {}.',
    'a example of {}.', 'a example of a person {}.', 'a example of a person using {}.',
    'a example of a person doing {}.', 'a example of a person during {}.',
    'a example of a person performing {}.', 'a example of a person practicing {}.',
    'a demonstration of {}.', 'a demonstration of a person {}.',
    'a demonstration of a person using {}.', 'a demonstration of a person doing {}.',
    'a demonstration of a person during {}.', 'a demonstration of a person performing {}.',
    'a demonstration of a person practicing {}.',
]


# ---------------------------------------------------------------- mmaction2, transcribed
# open-mmlab/mmaction2, mmaction/evaluation/functional/accuracy.py, written out from the source.

def mmaction_confusion_matrix(y_pred, y_real):
    label_set = np.unique(np.concatenate((y_pred, y_real)))
    num_labels = len(label_set)
    label_map = np.zeros(label_set[-1] + 1, dtype=np.int64)
    for i, label in enumerate(label_set):
        label_map[label] = i
    return np.bincount(num_labels * label_map[y_real] + label_map[y_pred],
                       minlength=num_labels ** 2).reshape(num_labels, num_labels)


def mmaction_mean_class_accuracy(scores, labels):
    pred = np.argmax(scores, axis=1)
    cf_mat = mmaction_confusion_matrix(pred, labels).astype(float)
    cls_cnt, cls_hit = cf_mat.sum(axis=1), np.diag(cf_mat)
    return np.mean([hit / cnt if cnt else 0.0 for cnt, hit in zip(cls_cnt, cls_hit)])


def mmaction_top_k_accuracy(scores, labels, k):
    max_k_preds = np.argsort(scores, axis=1)[:, -k:][:, ::-1]
    return np.logical_or.reduce(max_k_preds == np.asarray(labels)[:, np.newaxis], axis=1).mean()


# ---------------------------------------------------------------- the metric

def test_the_default_prompts_are_clips_kinetics_templates():
    assert list(CLIP_KINETICS_TEMPLATES) == CLIP_PROMPTS_MD


def test_accuracy_equals_mmaction2_without_ties():
    rng = np.random.default_rng(0)
    scores = rng.random((9, 40))  # [C, V]: no ties
    labels = rng.integers(0, 8, 40)  # class 8 has no video
    accuracy, per_class = kinetics_accuracy(torch.tensor(scores), labels)
    by_video = scores.T
    assert accuracy["top1"] == pytest.approx(100 * mmaction_top_k_accuracy(by_video, labels, 1))
    assert accuracy["top5"] == pytest.approx(100 * mmaction_top_k_accuracy(by_video, labels, 5))
    assert accuracy["mean_class_accuracy"] == pytest.approx(
        100 * mmaction_mean_class_accuracy(by_video, labels))
    assert np.isnan(per_class[8])
    for c in range(8):
        assert per_class[c] == pytest.approx(100 * np.mean(by_video[labels == c].argmax(1) == c))


def test_mean_class_accuracy_counts_a_predicted_class_without_videos_as_zero():
    # Videos of classes 0, 0, 1; class 2 has none but is predicted for the second video.
    scores = np.array([[0.9, 0.1, 0.2],    # class 0's scores of the 3 videos
                       [0.0, 0.2, 0.8],    # class 1
                       [0.1, 0.7, 0.1]])   # class 2
    labels = np.array([0, 0, 1])
    accuracy, per_class = kinetics_accuracy(scores, labels)
    # mmaction2: classes 0 (1 of 2), 1 (1 of 1) and 2 (predicted, no video: 0) -> 50;
    # averaging only the classes with videos would give 75.
    assert accuracy["mean_class_accuracy"] == pytest.approx(50.0)
    assert accuracy["mean_class_accuracy"] == pytest.approx(
        100 * mmaction_mean_class_accuracy(scores.T, labels))
    assert per_class[:2].tolist() == [50.0, 100.0] and np.isnan(per_class[2])
    # Not predicted and without videos: not counted at all.
    accuracy, _ = kinetics_accuracy(np.vstack([scores, np.full((1, 3), -1.0)]), labels)
    assert accuracy["mean_class_accuracy"] == pytest.approx(50.0)


@pytest.mark.parametrize("num_classes", [6])
def test_top_k_with_ties_against_every_small_case(num_classes):
    """Every score pattern over 3 levels and every true class: a video is right at k when its
    class is among the first k of the classes sorted by score, the lower index first among
    equals (numpy's argmax for k = 1), with peaks anywhere, mirrored patterns included."""
    for pattern in itertools.product((0.0, 0.5, 1.0), repeat=num_classes):
        scores = np.array(pattern)[:, None]  # [C, 1]: one video
        for label in range(num_classes):
            order = sorted(range(num_classes), key=lambda c: (-pattern[c], c))
            rank = order.index(label) + 1
            accuracy, _ = kinetics_accuracy(scores, [label])
            assert accuracy["top1"] == (100.0 if rank <= 1 else 0.0), (pattern, label)
            assert accuracy["top5"] == (100.0 if rank <= 5 else 0.0), (pattern, label)
            assert (rank == 1) == (int(np.argmax(pattern)) == label)


def test_accuracy_checks_its_input():
    with pytest.raises(ValueError, match="one class per video"):
        kinetics_accuracy(np.zeros((3, 2)), [0])
    with pytest.raises(ValueError, match="NaN"):
        kinetics_accuracy(np.full((3, 1), np.nan), [0])


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    """val.csv served from 127.0.0.1, and a folder of the clips (one missing); read only."""
    videos = tmp_path_factory.mktemp("kinetics") / "videos"
    payload = data.build_kinetics(videos, missing=("Zz-9yy8xx7w",))
    with synthetic.FileServer(payload) as server:
        yield server.url, videos


def kinetics_argv(tmp_path, model, source, *extra):
    url, videos = source
    return [str(a) for a in synthetic.cli_argv(
        tmp_path, tmp_path / "data", model, "--dataset", "kinetics400", "--video_root",
        videos, "--kinetics400_url", url, *extra)]


def test_kinetics_missing_videos_stop_the_run(tmp_path, tiny_clip_files, kinetics):
    missing = kinetics_video_id("Zz-9yy8xx7w", 5, 15)
    assert missing == "Zz-9yy8xx7w_000005_000015"
    with pytest.raises(DatasetError, match=rf"1 of 5 videos of Kinetics-400 val are missing from "
                                           rf".*videos, e.g. \['{missing}'\]"):
        cli_module.main(cli_module.parse_args(kinetics_argv(
            tmp_path, tiny_clip_files["torchscript"], kinetics)))


def test_kinetics_end_to_end(tmp_path, tiny_clip_files, kinetics, capsys):
    report = cli_module.main(cli_module.parse_args(kinetics_argv(
        tmp_path, tiny_clip_files["torchscript"], kinetics, "--skip_bad_videos",
        "--query_scoring_temp", "0.1", "--save_embeddings", tmp_path / "e.pt")))
    captured = capsys.readouterr()
    assert "1 of 5 videos are missing from" in captured.err
    lines = captured.out.strip().splitlines()[1:]
    assert all(re.fullmatch(r"\{'top1': \d+\.\d, 'top5': \d+\.\d, 'mean_class_accuracy': "
                            r"\d+\.\d\}  agg: .*\[partial: 1 bad video\(s\) and 0 queries left "
                            r"out, not comparable with the benchmark\]", line) for line in lines)
    content = torch.load(tmp_path / "e.pt", weights_only=True)
    classes = ["abseiling", "dancing ballet", "passing American football (in game)",
               "playing guitar"]
    assert content["task"] == "classification" and content["captions"] == classes
    # The abseiling clip lies in a folder named for its class; the others are flat.
    assert content["video_ids"] == ["0wR5jVB-WPk_000417_000427", "3caPS4FHFF8_000036_000046",
                                    "aaa_BBBccc1_000000_000010", "q1w2e3r4t5y_000120_000130"]
    labels = [content["labels"][v][0] for v in content["video_ids"]]
    assert labels == [3, 0, 1, 2]
    model = load_model("clip", str(tiny_clip_files["torchscript"]), CPU)
    with torch.inference_mode():
        prompts = model.encode_text([t.format(classes[2]) for t in CLIP_PROMPTS_MD], CPU)
    unit = prompts / prompts.norm(dim=1, keepdim=True)
    assert_close(content["text_embeds"][2], unit.mean(0), atol=1e-6, rtol=0)
    text, video = content["text_embeds"], content["video_embeds"]
    for result, sims in zip(report["results"], [similarity_meanpooling(text, video),
                                                similarity_queryscoring(text, video, 0.1)]):
        by_video = sims.T.numpy()
        assert result["top1"] == pytest.approx(100 * mmaction_top_k_accuracy(by_video, labels, 1))
        assert result["top5"] == pytest.approx(100 * mmaction_top_k_accuracy(by_video, labels, 5))
        assert result["mean_class_accuracy"] == pytest.approx(
            100 * mmaction_mean_class_accuracy(by_video, labels))
        assert set(result["per_class_accuracy"]) == set(classes)


def test_kinetics_prompts_and_options(tmp_path, tiny_clip_files, kinetics, capsys):
    report = cli_module.main(cli_module.parse_args(kinetics_argv(
        tmp_path, tiny_clip_files["torchscript"], kinetics, "--skip_bad_videos", "--prompt", "{}",
        "--save_embeddings", tmp_path / "e.pt")))
    content = torch.load(tmp_path / "e.pt", weights_only=True)
    model = load_model("clip", str(tiny_clip_files["torchscript"]), CPU)
    with torch.inference_mode():
        expected = model.encode_text(content["captions"], CPU)
    assert_close(content["text_embeds"], expected.float(), atol=1e-6, rtol=0)
    assert report["cache"]["hit"] is False
    with pytest.raises(SystemExit):
        cli_module.parse_args(["--dataset", "kinetics400", "--bootstrap", "100"])
    assert "Kinetics-400 reports accuracy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_module.parse_args(["--dataset", "didemo", "--prompt", "{}"])
    assert "--prompt is for --dataset charades or kinetics400" in capsys.readouterr().err
