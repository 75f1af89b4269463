import json
import re

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import data_loader
import run_msr_retrieval as cli_module
from clip_hitchhiker.models.clip_models import load_clip_model
from clip_hitchhiker.errors import ModelLoadError, VideoDecodeError
from data_loader import FramePreprocess, read_video_frames
from metrics import t2v_metrics, v2t_metrics
from query_scoring import similarity_meanpooling, similarity_queryscoring
from tests import synthetic

LINE = re.compile(r"^\{'R1': \d+\.\d, 'R5': \d+\.\d, 'R10': \d+\.\d, 'R50': \d+\.\d, "
                  r"'MedR': \d+\.\d, 'MeanR': \d+\.\d{1,3}\}  agg: (mean-pooling|query-scoring, "
                  r"temp: [\d.e-]+)$")


def run(tmp_path, data_root, model, *extra):
    return cli_module.main(cli_module.parse_args(synthetic.cli_argv(tmp_path, data_root, model,
                                                                    *extra)))


def expected_line(metrics, label):
    rounded = {k: round(v, 3 if k == "MeanR" else 1) for k, v in metrics.items()}
    return f"{rounded}  agg: {label}"


def test_end_to_end_lines_and_metrics_match_saved_embeddings(tmp_path, data_root,
                                                             tiny_clip_files, capsys):
    saved = tmp_path / "emb.pt"
    report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--query_scoring_temp",
                 "0.1", "0.5", "--save_embeddings", saved, "--output_json", tmp_path / "out.json")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("encoded 5 videos (20 frames) in ")
    assert all(LINE.match(line) for line in lines[1:]), lines
    content = torch.load(saved, weights_only=True)
    text, video = content["text_embeds"], content["video_embeds"]
    assert tuple(text.shape) == (5, 32) and tuple(video.shape) == (5, 4, 32)
    assert content["video_ids"] == sorted(content["video_ids"]) and content["skipped"] == []
    recomputed = [expected_line(t2v_metrics(similarity_meanpooling(text, video)), "mean-pooling")]
    recomputed += [expected_line(t2v_metrics(similarity_queryscoring(text, video, t)),
                                 f"query-scoring, temp: {t}") for t in (0.1, 0.5)]
    assert lines[1:] == recomputed
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["results"][2]["temperature"] == 0.5
    assert written["results"][2]["v2t"] == v2t_metrics(similarity_queryscoring(text, video, 0.5))
    assert written["counts"]["videos"] == 5 and written["counts"]["queries"] == 5
    assert written["versions"]["torch"] == torch.__version__.split("+")[0] or \
        written["versions"]["torch"] == torch.__version__
    assert set(written["timings_s"]) >= {"load", "encode", "total"}
    assert report["results"] == written["results"]


def test_saved_video_embeddings_are_encode_image_of_sampled_frames(tmp_path, data_root,
                                                                   tiny_clip_files,
                                                                   msrvtt_source):
    _, info = msrvtt_source
    saved = tmp_path / "emb.pt"
    run(tmp_path, data_root, tiny_clip_files["torchscript"], "--save_embeddings", saved,
        "--frame_chunk", "3")  # chunks that straddle videos
    content = torch.load(saved, weights_only=True)
    model, preprocess, _ = load_clip_model(str(tiny_clip_files["torchscript"]),
                                                      torch.device("cpu"))
    for row, video_id in enumerate(content["video_ids"]):
        raw = read_video_frames(data_root / "MSRVTT" / "videos" / "all" / f"{video_id}.mp4", 4)
        assert synthetic.decode_frame_indices(raw) == data_loader.sample_frame_indices(
            info["frame_counts"][video_id], 4)
        with torch.inference_mode():
            expected = model.encode_image(FramePreprocess(preprocess)(raw))
        assert_close(content["video_embeds"][row], expected, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        expected_text = model.encode_text(__import__("clip").tokenize(content["captions"]))
    assert_close(content["text_embeds"], expected_text, atol=1e-5, rtol=1e-5)


def test_cache_reused_for_other_temperatures_without_decoding(tmp_path, data_root,
                                                              tiny_clip_files, monkeypatch,
                                                              capsys):
    first = run(tmp_path, data_root, tiny_clip_files["torchscript"])
    assert first["counts"]["decoded_videos"] == 5 and not first["cache"]["hit"]
    decoded = []
    monkeypatch.setattr(data_loader, "read_video", lambda *a, **k: decoded.append(a))
    capsys.readouterr()
    second = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--query_scoring_temp",
                 "0.01", "1.0")
    assert decoded == [] and second["counts"]["decoded_videos"] == 0 and second["cache"]["hit"]
    assert second["results"][0] == first["results"][0]  # mean pooling unchanged
    assert "loaded from cache" in capsys.readouterr().out


@pytest.mark.parametrize("change", [("--num_frames", "3"), "model", "state_dict"])
def test_cache_invalidated_by_num_frames_or_model(tmp_path, data_root, tiny_clip_files, change):
    run(tmp_path, data_root, tiny_clip_files["torchscript"])
    if change == "model":
        again = run(tmp_path, data_root, tiny_clip_files["other"])
    elif change == "state_dict":
        again = run(tmp_path, data_root, tiny_clip_files["state_dict"])
    else:
        again = run(tmp_path, data_root, tiny_clip_files["torchscript"], *change)
    assert not again["cache"]["hit"] and again["counts"]["decoded_videos"] == 5


def test_state_dict_checkpoint_equals_torchscript(tmp_path, data_root, tiny_clip_files):
    run(tmp_path, data_root, tiny_clip_files["torchscript"], "--save_embeddings", tmp_path / "a")
    run(tmp_path, data_root, tiny_clip_files["state_dict"], "--save_embeddings", tmp_path / "b")
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in "ab")
    assert_close(a["video_embeds"], b["video_embeds"], atol=0, rtol=0)
    assert_close(a["text_embeds"], b["text_embeds"], atol=0, rtol=0)


def test_truncated_cache_is_recomputed(tmp_path, data_root, tiny_clip_files):
    first = run(tmp_path, data_root, tiny_clip_files["torchscript"])
    cache_file = tmp_path / "cache" / first["cache"]["path"].split("/")[-1]
    cache_file.write_bytes(cache_file.read_bytes()[:200])
    with pytest.warns(UserWarning, match="unreadable embedding cache"):
        again = run(tmp_path, data_root, tiny_clip_files["torchscript"])
    assert not again["cache"]["hit"] and again["counts"]["decoded_videos"] == 5
    assert again["results"] == first["results"]
    assert run(tmp_path, data_root, tiny_clip_files["torchscript"])["cache"]["hit"]


def test_skip_bad_videos(tmp_path, data_root, tiny_clip_files, capsys):
    (data_root / "MSRVTT" / "videos" / "all" / "video7012.mp4").write_bytes(b"corrupt")
    with pytest.raises(VideoDecodeError, match="video7012.mp4.*--skip_bad_videos"):
        run(tmp_path, data_root, tiny_clip_files["torchscript"], "--no_cache")
    capsys.readouterr()
    report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--skip_bad_videos",
                 "--num_workers", "2")
    captured = capsys.readouterr()
    assert report["counts"]["videos"] == 4 and report["counts"]["skipped_videos"] == 1
    assert report["counts"]["queries"] == 4 and report["counts"]["skipped_queries"] == 1
    metric_lines = captured.out.strip().splitlines()[1:]
    assert all(line.endswith("[partial: 1 bad video(s) and 1 queries left out, not comparable "
                             "with the benchmark]") for line in metric_lines)
    assert "skipped video7012" in captured.err
    # The partial cache must not pass for a complete result in a strict run.
    with pytest.raises(VideoDecodeError, match="1 video\\(s\\) failed to decode"):
        run(tmp_path, data_root, tiny_clip_files["torchscript"])


def test_csv_dataset_end_to_end(tmp_path, tiny_clip_files, capsys):
    (tmp_path / "clips").mkdir()
    for name, length in [("a.mp4", 12), ("b.mp4", 30), ("c.mp4", 7)]:
        synthetic.write_index_video(tmp_path / "clips" / name, length)
    (tmp_path / "mine.csv").write_text("video_path,caption\nclips/a.mp4,one\nclips/b.mp4,two\n"
                                       "clips/a.mp4,three\nclips/c.mp4,four\n")
    report = run(tmp_path, tmp_path / "unused", tiny_clip_files["torchscript"], "--csv",
                 tmp_path / "mine.csv", "--video_root", tmp_path, "--save_embeddings",
                 tmp_path / "emb.pt")
    content = torch.load(tmp_path / "emb.pt", weights_only=True)
    assert content["video_ids"] == ["clips/a.mp4", "clips/b.mp4", "clips/c.mp4"]
    assert content["captions"] == ["one", "three", "two", "four"]
    sims = similarity_meanpooling(content["text_embeds"], content["video_embeds"])
    assert report["results"][0]["t2v"] == t2v_metrics(sims, query_to_video=np.array([0, 0, 1, 2]))
    assert report["counts"] == {"videos": 3, "queries": 4, "skipped_videos": 0,
                                "skipped_queries": 0, "decoded_videos": 3, "truncated_captions": 0,
                                "skipped": [], "videos_shorter_than_num_frames": 0}


def test_miech_split_scores_all_captions(tmp_path, data_root, tiny_clip_files, msrvtt_source):
    _, info = msrvtt_source
    report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--split", "miech",
                 "--save_embeddings", tmp_path / "emb.pt")
    content = torch.load(tmp_path / "emb.pt", weights_only=True)
    ids = sorted(info["lists"]["miech"])
    assert content["query_video_ids"] == [v for v in ids for _ in info["captions"][v]]
    assert report["counts"]["queries"] == 14  # 5 videos x 3 captions, one video has 2
    query_to_video = np.array([ids.index(v) for v in content["query_video_ids"]])
    sims = similarity_queryscoring(content["text_embeds"], content["video_embeds"], 0.1)
    assert report["results"][1]["t2v"] == t2v_metrics(sims, query_to_video=query_to_video)
    assert report["results"][1]["v2t"] == v2t_metrics(sims, query_to_video=query_to_video)


def test_weights_that_cannot_be_downloaded(tmp_path, data_root, monkeypatch):
    import clip
    with synthetic.FileServer(b"", status=404) as server:
        monkeypatch.setitem(clip.clip._MODELS, "ViT-B/16", server.url)
        with pytest.raises(ModelLoadError, match="--model /path/to/MSRVTT.zip"):
            run(tmp_path, data_root, "ViT-B/16", "--download_root", tmp_path / "weights")
    with pytest.raises(ModelLoadError, match="neither a file nor one of"):
        run(tmp_path, data_root, "ViT-Z/99")


def test_cli_reports_errors_without_traceback(tmp_path, tiny_clip_files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_module.cli(["--csv", str(tmp_path / "missing.csv"), "--model",
                        str(tiny_clip_files["torchscript"]), "--device", "cpu"])
    assert exit_info.value.code == 1
    assert "error: CSV file not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--num_frames", "0"], ["--query_scoring_temp", "0"],
                                  ["--frame_chunk", "0"], ["--split", "train"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit):
        cli_module.parse_args(argv)
    assert "error:" in capsys.readouterr().err


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        cli_module.parse_args(["--help"])
    text = capsys.readouterr().out
    for option in ["--num_frames", "--query_scoring_temp", "--batch_size", "--num_workers",
                   "--frame_chunk", "--model", "--download_root", "--device", "--split", "--csv",
                   "--video_root", "--data_root", "--msrvtt_url", "--cache_dir", "--no_cache",
                   "--save_embeddings", "--output_json", "--skip_bad_videos", "--antialias",
                   "--preprocess_on"]:
        assert option in text


def test_cli_prints_config_errors_as_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        cli_module.cli(["--device", "cuda"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: --device cuda: CUDA is not available on this " \
                                      "machine (no GPU, or a CPU-only build of torch); use " \
                                      "--device cpu\n"


def test_cli_keeps_the_traceback_of_errors_from_libraries(monkeypatch):
    def main(args):
        raise ValueError("raised deep inside torch")

    monkeypatch.setattr(cli_module, "main", main)
    with pytest.raises(ValueError, match="deep inside torch"):
        cli_module.cli(["--device", "cpu"])


def test_decode_failure_rule():
    skipped = [["video1", "cannot decode a.mp4"], ["video2", "video file not found: b.mp4"]]
    cli_module.check_decode_failures([], skip_bad_videos=False)
    cli_module.check_decode_failures(skipped, skip_bad_videos=True)
    with pytest.raises(VideoDecodeError, match=r"^2 video\(s\) failed to decode, e.g. video1: "
                                               r"cannot decode a.mp4; pass --skip_bad_videos"):
        cli_module.check_decode_failures(skipped, skip_bad_videos=False)
    with pytest.raises(VideoDecodeError, match="recorded in the embedding cache c.pt; pass "
                                               "--no_cache"):
        cli_module.check_decode_failures(skipped, skip_bad_videos=False, cache_file="c.pt")


def write_mixed_resolution_csv(tmp_path):
    """Three videos of different sizes, for batches that mix resolutions."""
    (tmp_path / "clips").mkdir()
    for name, length, width, height in [("a.mp4", 12, 64, 48), ("b.mp4", 30, 40, 80),
                                        ("c.mp4", 7, 100, 100)]:
        synthetic.write_index_video(tmp_path / "clips" / name, length, width, height)
    (tmp_path / "mixed.csv").write_text("video_path,caption\nclips/a.mp4,one\n"
                                        "clips/b.mp4,two\nclips/c.mp4,three\n")
    return tmp_path / "mixed.csv"


def test_device_preprocessing_equals_workers(tmp_path, tiny_clip_files):
    csv = write_mixed_resolution_csv(tmp_path)
    reports = {}
    for placement in ("workers", "device"):
        reports[placement] = run(tmp_path, tmp_path / "unused", tiny_clip_files["torchscript"],
                                 "--csv", csv, "--video_root", tmp_path, "--batch_size", 3,
                                 "--num_workers", 2, "--preprocess_on", placement, "--no_cache",
                                 "--save_embeddings", tmp_path / f"{placement}.pt")
    workers, device = (torch.load(tmp_path / f"{p}.pt", weights_only=True)
                       for p in ("workers", "device"))
    assert_close(device["video_embeds"], workers["video_embeds"], atol=1e-6, rtol=0)
    assert reports["device"]["preprocess"]["on"] == "device"
    assert reports["workers"]["results"] == reports["device"]["results"]
    # auto on a CPU means the workers.
    auto = run(tmp_path, tmp_path / "unused", tiny_clip_files["torchscript"], "--csv", csv,
               "--video_root", tmp_path, "--no_cache")
    assert auto["preprocess"]["on"] == "workers"


def test_antialias_is_its_own_cache_entry_and_recorded(tmp_path, data_root, tiny_clip_files):
    plain = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--save_embeddings",
                tmp_path / "plain.pt", "--output_json", tmp_path / "plain.json")
    smooth = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--antialias",
                 "--save_embeddings", tmp_path / "aa.pt")
    assert not smooth["cache"]["hit"] and smooth["counts"]["decoded_videos"] == 5
    assert smooth["cache"]["path"] != plain["cache"]["path"]
    assert plain["preprocess"]["antialias"] is False and smooth["preprocess"]["antialias"]
    written = json.loads((tmp_path / "plain.json").read_text())
    assert written["preprocess"] == {"on": "workers", "antialias": False,
                                     "description": plain["preprocess"]["description"]}
    assert "antialias=False" in written["preprocess"]["description"]
    a, b = (torch.load(tmp_path / n, weights_only=True)["video_embeds"] for n in ("plain.pt",
                                                                                "aa.pt"))
    assert (a - b).abs().max() > 1e-4  # the resize differs, so do the embeddings
    assert run(tmp_path, data_root, tiny_clip_files["torchscript"], "--antialias")["cache"]["hit"]


def test_evaluate_scores_and_ranks_on_the_given_device(monkeypatch):
    g = torch.Generator().manual_seed(0)
    content = {"text_embeds": torch.randn(6, 8, generator=g),
               "video_embeds": torch.randn(3, 4, 8, generator=g),
               "video_ids": ["a", "b", "c"], "query_video_ids": ["a", "a", "b", "c", "c", "x"]}
    seen = []

    def recording(fn):
        def wrapped(text, video, *args):
            seen.append((text.device, video.device))
            return fn(text, video, *args)
        return wrapped

    monkeypatch.setattr(cli_module, "similarity_queryscoring",
                        recording(similarity_queryscoring))
    device = torch.device("cpu")
    results = cli_module.evaluate(content, [0.1], device)
    assert seen == [(device, device)]
    query_to_video = np.array([0, 0, 1, 2, 2])  # the query of missing video "x" is left out
    sims = similarity_queryscoring(content["text_embeds"][:5], content["video_embeds"], 0.1)
    assert results[1]["t2v"] == t2v_metrics(sims.numpy(), query_to_video=query_to_video)
    assert results[1]["v2t"] == v2t_metrics(sims.numpy(), query_to_video=query_to_video)
