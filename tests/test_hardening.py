"""Bad input and bad luck, each reproduced first: stale caches, unwritable outputs, broken
models, extreme temperatures, outputs over inputs, interruptions and unclear messages."""
import json
import shutil

import pytest
import torch

import run_msr_retrieval as cli_module
from clip_hitchhiker import embedding_cache
from clip_hitchhiker.errors import (ConfigError, EmbeddingError, ModelLoadError, OutputError,
                                    VideoDecodeError)
from query_scoring import similarity_queryscoring
from tests import synthetic


def run(tmp_path, data_root, model, *extra):
    return cli_module.main(cli_module.parse_args(synthetic.cli_argv(tmp_path, data_root, model,
                                                                    *extra)))


def video_file(data_root, video_id="video7012"):
    return data_root / "MSRVTT" / "videos" / "all" / f"{video_id}.mp4"


# ---------------------------------------------------------------- results lost or wrong

def test_a_repaired_video_is_decoded_again(tmp_path, data_root, tiny_clip_files):
    good = video_file(data_root).read_bytes()
    video_file(data_root).write_bytes(b"corrupt")
    partial = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--skip_bad_videos")
    assert partial["counts"]["skipped_videos"] == 1
    # The cached failure is named as such, with the way out.
    with pytest.raises(VideoDecodeError, match="recorded in the embedding cache .*--no_cache"):
        run(tmp_path, data_root, tiny_clip_files["torchscript"])
    video_file(data_root).write_bytes(good)
    repaired = run(tmp_path, data_root, tiny_clip_files["torchscript"])
    assert not repaired["cache"]["hit"] and repaired["counts"]["skipped_videos"] == 0
    assert repaired["counts"]["decoded_videos"] == 5


def test_an_unwritable_cache_folder_only_warns(tmp_path, data_root, tiny_clip_files, capsys):
    (tmp_path / "a_file").write_text("")
    with pytest.warns(UserWarning, match="cache folder .*a_file/cache cannot be written"):
        report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--cache_dir",
                     tmp_path / "a_file" / "cache")
    assert len(report["results"]) == 2
    assert "agg: mean-pooling" in capsys.readouterr().out


def test_a_failed_cache_write_only_warns(tmp_path, data_root, tiny_clip_files, monkeypatch,
                                         capsys):
    def full_disk(path, content, key):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embedding_cache, "save_embeddings", full_disk)
    with pytest.warns(UserWarning, match="could not write the embedding cache .*No space"):
        report = run(tmp_path, data_root, tiny_clip_files["torchscript"])
    assert report["results"][0]["t2v"]["R1"] >= 0
    assert "agg: mean-pooling" in capsys.readouterr().out


def test_unwritable_output_json_stops_before_decoding(tmp_path, data_root, tiny_clip_files,
                                                      monkeypatch):
    import data_loader
    decoded = []
    monkeypatch.setattr(data_loader, "read_video", lambda *a: decoded.append(a))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match="--output_json .*a_file/out.json cannot be written"):
        run(tmp_path, data_root, tiny_clip_files["torchscript"], "--output_json",
            tmp_path / "a_file" / "out.json")
    assert decoded == []


def test_a_failed_output_write_comes_after_the_metrics(tmp_path, data_root, tiny_clip_files,
                                                       monkeypatch, capsys):
    def full_disk(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embedding_cache, "write_json", full_disk)
    with pytest.raises(OutputError, match="metrics above are complete.*No space"):
        run(tmp_path, data_root, tiny_clip_files["torchscript"], "--output_json",
            tmp_path / "out.json")
    assert "agg: query-scoring, temp: 0.1" in capsys.readouterr().out


def test_zeroed_projections_are_an_error_not_perfect_retrieval(tmp_path, data_root):
    model = synthetic.tiny_clip()
    with torch.no_grad():
        model.visual.proj.zero_()
        model.text_projection.zero_()
    torch.save(model.state_dict(), tmp_path / "zeroed.pt")
    with pytest.raises(EmbeddingError, match="model .*zeroed.pt gave zero or non-finite "
                                             "embeddings for 5 of 5 caption"):
        run(tmp_path, data_root, tmp_path / "zeroed.pt")


def test_ties_are_counted_and_warned_with_averaged_figures(capsys):
    g = torch.Generator().manual_seed(0)
    content = {"text_embeds": torch.randn(4, 8, generator=g),
               "video_embeds": torch.ones(4, 2, 8),  # every video alike: every query ties
               "video_ids": list("abcd"), "query_video_ids": list("abcd")}
    results = cli_module.evaluate(content, [0.1])
    assert [r["t2v_tied_queries"] for r in results] == [4, 4]
    assert results[0]["t2v"]["R1"] == 100.0  # the optimistic policy flatters
    assert results[0]["t2v_averaging"]["MedR"] == 2.5
    cli_module.print_results(results, "", 4)
    err = capsys.readouterr().err
    assert err.count("warning: 4 of 4 queries tie their video's score") == 2
    assert "with ties averaged: {'R1': 0.0" in err


def test_a_tiny_temperature_gives_the_best_frame(tmp_path, data_root, tiny_clip_files):
    report = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--query_scoring_temp",
                 "1e-300", "--save_embeddings", tmp_path / "e.pt")
    content = torch.load(tmp_path / "e.pt", weights_only=True)
    text, video = content["text_embeds"], content["video_embeds"]
    best = torch.einsum("t d, v f d -> t v f", text / text.norm(dim=1, keepdim=True),
                        video / video.norm(dim=2, keepdim=True)).amax(2)
    from metrics import t2v_metrics
    sims = similarity_queryscoring(text, video, 1e-300)
    torch.testing.assert_close(sims, best, atol=1e-6, rtol=0)
    assert report["results"][1]["t2v"] == t2v_metrics(sims)


def test_one_failing_aggregation_leaves_the_others(tmp_path, data_root, tiny_clip_files,
                                                   monkeypatch, capsys):
    def failing_at_half(text, video, temperature):
        if temperature == 0.5:
            raise ValueError("sims contains NaN; check the embeddings that produced it")
        return similarity_queryscoring(text, video, temperature)

    monkeypatch.setattr(cli_module, "similarity_queryscoring", failing_at_half)
    argv = synthetic.cli_argv(tmp_path, data_root, tiny_clip_files["torchscript"],
                              "--query_scoring_temp", "0.1", "0.5", "--output_json",
                              tmp_path / "out.json")
    with pytest.raises(SystemExit) as exit_info:
        cli_module.cli(argv)
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "agg: mean-pooling" in captured.out and "temp: 0.1" in captured.out
    assert "error: sims contains NaN; check the embeddings that produced it  agg: " \
           "query-scoring, temp: 0.5" in captured.err
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["results"][2]["error"].startswith("sims contains NaN")


@pytest.mark.parametrize("option", ["--output_json", "--save_embeddings"])
@pytest.mark.parametrize("target", ["csv", "model", "video"])
def test_outputs_never_overwrite_inputs(tmp_path, tiny_clip_files, option, target):
    model = tmp_path / "model.pt"
    shutil.copy(tiny_clip_files["torchscript"], model)
    (tmp_path / "clips").mkdir()
    synthetic.write_index_video(tmp_path / "clips" / "a.mp4", 5)
    (tmp_path / "captions.csv").write_text("video_path,caption\nclips/a.mp4,one\n")
    before = {p: p.read_bytes() for p in (model, tmp_path / "captions.csv",
                                          tmp_path / "clips" / "a.mp4")}
    path = {"csv": tmp_path / "captions.csv", "model": tmp_path / "." / "model.pt",
            "video": tmp_path / "clips" / ".." / "clips" / "a.mp4"}[target]
    with pytest.raises(ConfigError, match=f"{option} .* is an input of this run"):
        run(tmp_path, tmp_path, model, "--csv", tmp_path / "captions.csv", "--video_root",
            tmp_path, option, path)
    assert {p: p.read_bytes() for p in before} == before


# ---------------------------------------------------------------- clear messages

def test_model_files_that_are_not_clip(tmp_path, data_root):
    traced = torch.jit.trace(torch.nn.Linear(3, 2), torch.zeros(1, 3))
    traced.save(str(tmp_path / "linear.pt"))
    with pytest.raises(ModelLoadError, match="TorchScript archive but not a CLIP model"):
        run(tmp_path, data_root, tmp_path / "linear.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty.pt is an empty file"):
        run(tmp_path, data_root, tmp_path / "empty.pt")
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ModelLoadError, match=r"--model .*notes.pt is not a checkpoint"):
        run(tmp_path, data_root, tmp_path / "notes.pt")


@pytest.mark.parametrize("device", ["mps", "gpu", "cuda:x"])
def test_unknown_devices_are_argument_errors(device, capsys):
    with pytest.raises(SystemExit):
        cli_module.parse_args(["--device", device])
    assert "--device must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_no_video_decoded_names_the_reasons(tmp_path, tiny_clip_files):
    (tmp_path / "c.csv").write_text("video_path,caption\ngone.mp4,x\nalso_gone.mp4,y\n")
    with pytest.raises(VideoDecodeError, match=r"no video could be decoded \(2 tried\), e.g. "
                                               r"gone.mp4: video file not found"):
        run(tmp_path, tmp_path, tiny_clip_files["torchscript"], "--csv", tmp_path / "c.csv",
            "--video_root", tmp_path, "--skip_bad_videos", "--no_cache")


@pytest.mark.parametrize("with_part", [True, False])
def test_ctrl_c_says_what_was_kept(tmp_path, monkeypatch, capsys, with_part):
    if with_part:
        (tmp_path / "MSRVTT.zip.part").write_bytes(b"x" * 1234)

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "main", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        cli_module.cli(["--data_root", str(tmp_path)])
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    if with_part:
        assert "MSRVTT.zip.part (1234 bytes) is kept" in err
    else:
        assert "nothing was kept" in err


def test_long_captions_are_counted_once(tmp_path, tiny_clip_files, capsys):
    (tmp_path / "clips").mkdir()
    synthetic.write_index_video(tmp_path / "clips" / "a.mp4", 5)
    synthetic.write_index_video(tmp_path / "clips" / "b.mp4", 5)
    long = " ".join(["word"] * 100)
    (tmp_path / "c.csv").write_text(f"video_path,caption\nclips/a.mp4,{long}\n"
                                    f"clips/b.mp4,short\nclips/b.mp4,{long} too\n")
    report = run(tmp_path, tmp_path, tiny_clip_files["torchscript"], "--csv",
                 tmp_path / "c.csv", "--video_root", tmp_path)
    assert report["counts"]["truncated_captions"] == 2
    assert capsys.readouterr().err.count("2 caption(s) are longer than the model's 77-token") == 1
