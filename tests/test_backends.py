"""The two CLIP libraries behind one interface: the same OpenAI-format checkpoint gives the same
embeddings through clip and open_clip, and open_clip's failures are one-line errors."""
import sys

import pytest
import torch
from torch.testing import assert_close

import run_msr_retrieval as cli_module
from clip_hitchhiker.models.backends import list_models, load_model
from clip_hitchhiker.errors import ConfigError, ModelLoadError
from data_loader import FramePreprocess
from tests import synthetic

pytest.importorskip("open_clip")
CPU = torch.device("cpu")
CAPTIONS = ["a red frame", "two people dancing in a kitchen", " ".join(["long"] * 100)]


def run(tmp_path, data_root, model, *extra):
    return cli_module.main(cli_module.parse_args(synthetic.cli_argv(tmp_path, data_root, model,
                                                                    *extra)))


def test_openai_checkpoint_gives_the_same_embeddings_through_both_backends(tiny_clip_files):
    path = str(tiny_clip_files["torchscript"])
    through_clip = load_model("clip", path, CPU)
    through_open_clip = load_model("open_clip", "ViT-B-16", CPU, pretrained=path)
    frames = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert_close(through_open_clip.encode_image(frames), through_clip.encode_image(frames),
                     atol=1e-5, rtol=0)
        assert_close(through_open_clip.encode_text(CAPTIONS, CPU),
                     through_clip.encode_text(CAPTIONS, CPU), atol=1e-5, rtol=0)
    assert through_open_clip.embed_dim == through_clip.embed_dim == 32
    assert through_open_clip.count_truncated(CAPTIONS) == through_clip.count_truncated(CAPTIONS)
    assert through_clip.count_truncated(CAPTIONS) == 1
    # The model's own preprocessing numbers, read from open_clip's transforms, are CLIP's.
    frames_uint8 = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8)
    assert_close(FramePreprocess(through_open_clip.preprocess)(frames_uint8),
                 FramePreprocess(through_clip.preprocess)(frames_uint8), atol=0, rtol=0)


def test_cli_runs_agree_and_are_cached_apart(tmp_path, data_root, tiny_clip_files):
    path = tiny_clip_files["torchscript"]
    clip_run = run(tmp_path, data_root, path, "--save_embeddings", tmp_path / "clip.pt")
    open_clip_run = run(tmp_path, data_root, "ViT-B-16", "--backend", "open_clip",
                        "--pretrained", path, "--save_embeddings", tmp_path / "open_clip.pt",
                        "--output_json", tmp_path / "r.json")
    assert not open_clip_run["cache"]["hit"]
    assert open_clip_run["cache"]["path"] != clip_run["cache"]["path"]
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("clip.pt", "open_clip.pt"))
    assert_close(b["video_embeds"], a["video_embeds"], atol=1e-5, rtol=0)
    assert_close(b["text_embeds"], a["text_embeds"], atol=1e-5, rtol=0)
    digest = open_clip_run["model"]["pretrained"]
    assert digest.startswith("sha256:") and clip_run["model"]["pretrained"] == digest
    assert open_clip_run["model"] == {"backend": "open_clip",
                                      "architecture": "openai-format file", "pretrained": digest}
    assert clip_run["model"]["backend"] == "clip"


def test_no_internet_is_one_line_that_says_what_to_do(tmp_path, data_root, monkeypatch,
                                                      caplog):
    import open_clip.pretrained

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline, raising=False)
    with pytest.raises(ModelLoadError, match=r"could not fetch open_clip weights ViT-B-16 "
                                             r"laion2b_s34b_b88k from https://huggingface.co/"
                                             r"laion/CLIP-ViT-B-16-laion2B-s34B-b88K .* pass the "
                                             r"file with --pretrained"):
        load_model("open_clip", "ViT-B-16", CPU, pretrained="laion2b_s34b_b88k")
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []  # no second message


def test_unknown_architecture_and_tag(tmp_path):
    with pytest.raises(ModelLoadError, match="'ViT-Q-99' is not an open_clip architecture"):
        load_model("open_clip", "ViT-Q-99", CPU, pretrained="openai")
    with pytest.raises(ModelLoadError, match="'no_such_tag' is neither a file nor a tag"):
        load_model("open_clip", "ViT-B-16", CPU, pretrained="no_such_tag")


def test_missing_open_clip_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ConfigError, match=r"pip install open_clip_torch \(or pip install "
                                          r"'\.\[open_clip\]'\)"):
        load_model("open_clip", "ViT-B-16", CPU, pretrained="openai")


def test_list_models(capsys):
    lines = list_models()
    assert lines[0] == "clip (--backend clip --model NAME):" and "  ViT-B/16" in lines
    assert "  ViT-B-16 laion2b_s34b_b88k" in lines and "  ViT-B-16 openai" in lines
    with pytest.raises(SystemExit) as exit_info:
        cli_module.cli(["--list_models"]) or sys.exit(0)
    assert exit_info.value.code == 0
    assert "ViT-SO400M-14-SigLIP" in capsys.readouterr().out


def test_pretrained_is_for_open_clip(capsys):
    with pytest.raises(SystemExit):
        cli_module.parse_args(["--pretrained", "openai"])
    assert "--pretrained is for --backend open_clip" in capsys.readouterr().err


def test_squash_preprocessing_as_siglip_has_it():
    from torchvision import transforms
    squash = transforms.Compose([
        transforms.Resize((32, 32), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    frames = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8)
    for antialias in (False, True):
        expected = (torch.nn.functional.interpolate(frames.float() / 255, size=(32, 32),
                                                    mode="bicubic", align_corners=False,
                                                    antialias=antialias) - 0.5) / 0.5
        assert_close(FramePreprocess(squash, antialias=antialias)(frames), expected, atol=1e-6,
                     rtol=0)
