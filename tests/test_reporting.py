"""What a reviewer reads: bootstrap lines, the temperature plot, the published figures, the run
manifest and the comparison with an earlier report."""
import hashlib
import json

import pytest
import torch

import run_msr_retrieval as cli_module
from clip_hitchhiker import reporting
from clip_hitchhiker.bootstrap import bootstrap
from clip_hitchhiker.downloads import sha256_file
from clip_hitchhiker.plots import temperature_figure
from data_loader import sample_frame_indices
from metrics import t2v_ranks, v2t_ranks
from query_scoring import similarity_meanpooling, similarity_queryscoring
from tests import synthetic
from tests.test_run_msr_retrieval import LINE

pytestmark = pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")


def run(tmp_path, data_root, model, *extra):
    return cli_module.main(cli_module.parse_args(synthetic.cli_argv(tmp_path, data_root, model,
                                                                    *extra)))


def test_bootstrap_lines_follow_the_release_lines(tmp_path, data_root, tiny_clip_files, capsys):
    report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--query_scoring_temp",
                 "0.1", "1.0", "--bootstrap", "300", "--seed", "3", "--save_embeddings",
                 tmp_path / "e.pt", "--output_json", tmp_path / "r.json")
    lines = capsys.readouterr().out.strip().splitlines()
    assert all(LINE.match(line) for line in lines[1:4]), lines  # the release's lines, unchanged
    assert [line.split("  agg: ")[1] for line in lines[4:7]] == [
        "mean-pooling", "query-scoring, temp: 0.1", "query-scoring, temp: 1.0"]
    assert lines[4].startswith("95% CI (300 resamples of 5 queries, seed 3): R1 [")
    assert "minus mean-pooling: R1 " in lines[5] and "minus mean-pooling" not in lines[4]
    # The intervals are the bootstrap of the ranks recomputed from the saved embeddings.
    content = torch.load(tmp_path / "e.pt", weights_only=True)
    text, video = content["text_embeds"], content["video_embeds"]
    sims = {"mean-pooling": similarity_meanpooling(text, video)}
    sims.update({f"query-scoring, temp: {t}": similarity_queryscoring(text, video, t)
                 for t in (0.1, 1.0)})
    rank_sets = {label: {"t2v": t2v_ranks(s), "v2t": v2t_ranks(s)} for label, s in sims.items()}
    expected = bootstrap(rank_sets, 300, seed=3, baseline="mean-pooling")
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["bootstrap"] == json.loads(json.dumps(expected))
    assert report["bootstrap"] == expected
    again = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--query_scoring_temp",
                "0.1", "1.0", "--bootstrap", "300", "--seed", "3")
    assert again["bootstrap"] == expected  # seeded: the same intervals from the cache


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<?xml"),
                                          (".pdf", b"%PDF-")])
def test_plot_series_equal_the_metrics_and_the_file_is_an_image(tmp_path, data_root,
                                                                tiny_clip_files, suffix, magic):
    report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--query_scoring_temp",
                 "1.0", "0.01", "0.1", "--bootstrap", "100", "--plot", tmp_path / f"p{suffix}")
    assert (tmp_path / f"p{suffix}").read_bytes().startswith(magic)
    figure = temperature_figure(report["results"], report["bootstrap"])
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and "temperature" in axes.get_xlabel()
    assert "recall" in axes.get_ylabel()
    by_label = {line.get_label(): line for line in axes.get_lines()}
    scored = sorted(report["results"][1:], key=lambda r: r["temperature"])
    for metric in ("R1", "R5", "R10"):
        line = by_label[f"{metric}, query-scoring"]
        assert list(line.get_xdata()) == [0.01, 0.1, 1.0]
        assert list(line.get_ydata()) == [r["t2v"][metric] for r in scored]
        pooled = by_label[f"{metric}, mean pooling"]
        assert pooled.get_linestyle() == "--"
        assert list(pooled.get_ydata()) == [report["results"][0]["t2v"][metric]] * 2
    # Per metric, the bootstrap interval as a bar at each temperature and a band joining them.
    from matplotlib.collections import LineCollection
    bars = [c for c in axes.collections if isinstance(c, LineCollection)]
    assert len(axes.collections) == 6 and len(bars) == 3
    intervals = sorted([r["temperature"], lo, hi] for r in scored
                       for metric in ("R1", "R5", "R10")
                       for lo, hi in [report["bootstrap"]["intervals"][
                           f"query-scoring, temp: {r['temperature']}"]["t2v"][metric]])
    drawn = sorted([float(x0), float(y0), float(y1)] for bar in bars
                   for (x0, y0), (_, y1) in bar.get_segments())
    assert drawn == [[float(v) for v in row] for row in intervals]


def test_plot_shows_the_interval_of_a_single_temperature(tmp_path, data_root, tiny_clip_files):
    """One temperature (the default) gives no band to see: the bars must still be there."""
    report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--bootstrap", "100")
    axes = temperature_figure(report["results"], report["bootstrap"]).axes[0]
    r1 = report["bootstrap"]["intervals"]["query-scoring, temp: 0.1"]["t2v"]["R1"]
    from matplotlib.collections import LineCollection
    bars = [c.get_segments() for c in axes.collections if isinstance(c, LineCollection)]
    assert len(bars) == 3 and [list(map(float, p)) for p in bars[0][0]] == [[0.1, r1[0]],
                                                                            [0.1, r1[1]]]


def test_plot_needs_a_known_format(capsys):
    with pytest.raises(SystemExit):
        cli_module.parse_args(["--plot", "sweep.jpg"])
    assert "--plot must end in one of .png, .svg, .pdf" in capsys.readouterr().err


@pytest.mark.parametrize("change,expected", [
    ({}, True), ({"dataset": "csv"}, False), ({"split": "miech"}, False), ({"split": None}, True),
    ({"dataset": "charades", "split": "test"}, False),
    ({"model_id": "ViT-B/32"}, False), ({"num_frames": 120}, False),
    ({"antialias": True}, False), ({"temperatures": [0.05]}, False), ({"partial": True}, False),
    ({"backend": "open_clip"}, False),
    ({"model_id": f"sha256:{reporting.OPENAI_VIT_B16_SHA256}"}, True)])
def test_release_configuration(change, expected):
    setting = dict(dataset="msrvtt", split="jsfusion", model_id="ViT-B/16", num_frames=16,
                   antialias=False, temperatures=[0.1, 1.0], partial=False, backend="clip")
    assert reporting.is_release_configuration(**{**setting, **change}) is expected


def test_published_figures_only_for_the_release_setting(tmp_path, data_root, tiny_clip_files,
                                                        monkeypatch, capsys):
    model = tiny_clip_files["torchscript"]
    run(tmp_path, data_root, model, "--num_frames", "16")
    assert "published" not in capsys.readouterr().out
    monkeypatch.setattr(reporting, "OPENAI_VIT_B16_SHA256", sha256_file(model))
    report = run(tmp_path, data_root, model, "--num_frames", "16", "--output_json",
                 tmp_path / "r.json")
    out = capsys.readouterr().out.splitlines()
    start = out.index("published (Bain et al., arXiv 2205.08508: MSR-VTT 1k-A, ViT-B/16, "
                      "16 frames):")
    assert out[start + 1] == ("{'R1': 33.3, 'R5': 55.0, 'R10': 65.2, 'R50': 84.8, 'MedR': 4.0, "
                              "'MeanR': 38.403}  agg: mean-pooling")
    r1 = report["results"][0]["t2v"]["R1"]
    assert out[start + 2].startswith(f"this run minus published: {{'R1': {r1 - 33.3:+.1f}, ")
    written = json.loads((tmp_path / "r.json").read_text())
    entry = written["published"]["query-scoring, temp: 0.1"]
    assert entry["published"]["MeanR"] == 37.602
    assert entry["difference"]["MeanR"] == pytest.approx(
        report["results"][1]["t2v"]["MeanR"] - 37.602)
    run(tmp_path, data_root, model, "--num_frames", "16", "--antialias")
    assert "published" not in capsys.readouterr().out


def test_manifest_records_what_was_decoded(tmp_path, data_root, tiny_clip_files, msrvtt_source):
    _, info = msrvtt_source
    report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--output_json",
                 tmp_path / "r.json")
    manifest = json.loads((tmp_path / "r.json").read_text())["manifest"]
    assert manifest == report["manifest"]
    assert set(manifest["videos"]) == set(info["lists"]["jsfusion"])
    for video_id, decoded in manifest["videos"].items():
        count = info["frame_counts"][video_id]
        assert decoded == {"decoder": "decord", "frames": count,
                           "indices": sample_frame_indices(count, 4), "resolution": [48, 64]}
    ids = sorted(info["lists"]["jsfusion"])
    captions = [info["captions"][v][info["caption_index"][v]] for v in ids]
    assert manifest["split_sha256"] == hashlib.sha256(json.dumps([ids, captions]).encode()
                                                      ).hexdigest()


def test_compare_finds_a_re_encoded_video(tmp_path, data_root, tiny_clip_files, capsys):
    run(tmp_path, data_root, tiny_clip_files["torchscript"], "--output_json",
        tmp_path / "before.json")
    synthetic.write_index_video(data_root / "MSRVTT" / "videos" / "all" / "video7012.mp4", 30,
                                width=80, height=60)
    capsys.readouterr()
    run(tmp_path, data_root, tiny_clip_files["torchscript"], "--compare",
        tmp_path / "before.json")
    out = capsys.readouterr().out
    assert f"compared with {tmp_path / 'before.json'}:" in out
    assert "split: same" in out
    assert "videos decoded differently: 1 of 5" in out
    assert ("video7012: frames 19 -> 30; indices [2, 6, 11, 16] -> [3, 11, 18, 26]; "
            "resolution [48, 64] -> [60, 80]") in out
    assert out.count("this run minus earlier: {'R1': ") == 2


def test_compare_reports_by_hand():
    earlier = {"versions": {"decord": "0.6.0"}, "manifest": {
        "split_sha256": "a" * 64, "videos": {"v1": {"frames": 10, "indices": [2, 7],
                                                    "resolution": [4, 4]},
                                             "gone": {"frames": 1, "indices": [0, 0],
                                                      "resolution": [4, 4]}}},
        "results": [{"aggregation": "mean-pooling", "temperature": None,
                     "t2v": {"R1": 50.0, "MeanR": 2.0}}]}
    current = {"versions": {"decord": "0.6.1"}, "manifest": {
        "split_sha256": "b" * 64, "videos": {"v1": {"frames": 10, "indices": [2, 7],
                                                    "resolution": [4, 4]}}},
        "results": [{"aggregation": "mean-pooling", "temperature": None,
                     "t2v": {"R1": 40.0, "MeanR": 2.25}}]}
    assert reporting.compare_reports(earlier, current, "old.json") == [
        "compared with old.json:", "split: DIFFERENT (sha256 bbbbbbbbbbbb…)",
        "versions: decord 0.6.0 -> 0.6.1",
        "this run minus earlier: {'R1': -10.0, 'MeanR': +0.250}  agg: mean-pooling",
        "videos decoded differently: 0 of 1",
        "videos in only one run: 1 only earlier (e.g. ['gone']), 0 only now (e.g. [])"]


def test_compare_needs_a_report(tmp_path, data_root, tiny_clip_files):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(cli_module.ConfigError, match="--compare .*bad.json is not a readable"):
        run(tmp_path, data_root, tiny_clip_files["torchscript"], "--compare",
            tmp_path / "bad.json")


def test_classification_lines_and_comparison():
    charades = {"aggregation": "mean-pooling", "temperature": None, "mAP": 21.149,
                "per_class_AP": {}}
    assert reporting.format_result_line(charades) == "{'mAP': 21.1}  agg: mean-pooling"
    kinetics = {"aggregation": "query-scoring", "temperature": 0.1, "top1": 40.04,
                "top5": 71.96, "mean_class_accuracy": 39.55, "per_class_accuracy": {}}
    assert reporting.format_result_line(kinetics, "  [partial]") == (
        "{'top1': 40.0, 'top5': 72.0, 'mean_class_accuracy': 39.5}  agg: query-scoring, "
        "temp: 0.1  [partial]")
    earlier = {**kinetics, "top1": 38.04, "top5": 71.96, "mean_class_accuracy": 40.05}
    assert reporting._metric_differences([earlier], [kinetics]) == [
        "this run minus earlier: {'top1': +2.0, 'top5': +0.0, 'mean_class_accuracy': -0.5}  "
        "agg: query-scoring, temp: 0.1"]
