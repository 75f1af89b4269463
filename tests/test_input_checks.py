"""Issue 18, parts 1, 3 and 4: Charades as the official evaluation reads it, bad inputs that
ended in a traceback or a silently wrong result, and a cache that outlives a prompt sweep.
Each test fails on the code before it."""
import json

import pytest
import torch

import run_msr_retrieval as cli_module
from clip_hitchhiker.charades import load_charades_classes, load_charades_split
from clip_hitchhiker.errors import DatasetError
from tests import synthetic


def run(tmp_path, data_root, model, *extra):
    return cli_module.main(cli_module.parse_args(synthetic.cli_argv(tmp_path, data_root, model,
                                                                    *extra)))


def parse_error(argv, capsys):
    """The one line parse_args prints before exiting."""
    with pytest.raises(SystemExit):
        cli_module.parse_args(argv)
    return capsys.readouterr().err.strip().splitlines()[-1]


# ---------------------------------------------------------------- Charades files

CHARADES_HEADER = "id,subject,actions,length\n"


def test_a_charades_video_listed_twice_counts_once_with_a_warning(tmp_path):
    path = tmp_path / "test.csv"
    path.write_text(CHARADES_HEADER + "AB001,S1,c000 0 1,5\nAB002,S1,,5\n"
                    "AB001,S1,c001 0 1,5\n")
    with pytest.warns(UserWarning, match=r"1 row\(s\) repeat a video already listed \(e.g. "
                                         r"\['AB001'\]\); each video counts once"):
        video_ids, labels = load_charades_split(path, ["c000", "c001"])
    assert video_ids == ["AB001", "AB002"] and labels == [[0], []]


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_an_empty_charades_class_file_says_so(tmp_path, text):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(DatasetError, match=f"the class file {path} is empty"):
        load_charades_classes(path)


@pytest.mark.parametrize("text", ["", CHARADES_HEADER])
def test_an_empty_charades_split_says_so(tmp_path, text):
    path = tmp_path / "test.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=f"{path} lists no video: the split is empty"):
        load_charades_split(path, ["c000"])


# ---------------------------------------------------------------- prompts

@pytest.mark.parametrize("template,problem", [
    ("{} and {}", "has 2 replacement field"), ("{0}", "has 1 replacement field"),
    ("{name}", "has 1 replacement field"), ("a video of {!r}", "has 1 replacement field"),
    ("a { video of {}", "has a stray brace"), ("a } video of {}", "has a stray brace")])
def test_prompt_templates_need_exactly_one_empty_field(template, problem, capsys):
    line = parse_error(["--dataset", "charades", "--prompt", "{}", "--prompt", template], capsys)
    assert f"error: --prompt {template!r} " in line and problem in line
    assert "write a literal brace as {{ or }}" in line


def test_a_literal_brace_in_a_prompt_is_allowed():
    args = cli_module.parse_args(["--dataset", "charades", "--prompt", "{{x}} {}"])
    assert args.prompt == ["{{x}} {}"]


# ---------------------------------------------------------------- the cache and prompt sweeps

@pytest.fixture(scope="module")
def charades_urls(tmp_path_factory):
    root = tmp_path_factory.mktemp("charades_source")
    synthetic.build_charades(root)
    with synthetic.FileServer(synthetic.zip_bytes(root / "Charades")) as annotations, \
            synthetic.FileServer(synthetic.zip_bytes(root / "Charades_v1_480")) as videos:
        yield annotations.url, videos.url


def charades_argv(tmp_path, model, urls, *extra):
    argv = synthetic.cli_argv(tmp_path, tmp_path / "data", model, "--dataset", "charades",
                              "--charades_annotations_url", urls[0], "--charades_url", urls[1],
                              "--query_scoring_temp", "0.1", "1.0", *extra)
    return argv


def no_decoding(*args, **kwargs):
    raise AssertionError("a video was decoded")


def test_a_prompt_sweep_decodes_the_videos_once(tmp_path, tiny_clip_files, charades_urls,
                                                monkeypatch):
    import data_loader
    model = tiny_clip_files["torchscript"]
    first = cli_module.main(cli_module.parse_args(charades_argv(
        tmp_path, model, charades_urls, "--prompt", "{}", "--save_embeddings",
        tmp_path / "first.pt")))
    assert first["counts"]["decoded_videos"] == 5 and not first["cache"]["hit"]
    prompts = ["--prompt", "a video of a person {}", "--prompt", "{}"]
    cold = cli_module.main(cli_module.parse_args(charades_argv(
        tmp_path, model, charades_urls, *prompts, "--no_cache", "--save_embeddings",
        tmp_path / "cold.pt")))
    monkeypatch.setattr(data_loader, "read_video", no_decoding)
    swept = cli_module.main(cli_module.parse_args(charades_argv(
        tmp_path, model, charades_urls, *prompts, "--save_embeddings", tmp_path / "swept.pt")))
    assert swept["cache"]["hit"] and swept["counts"]["decoded_videos"] == 0
    assert swept["results"] == cold["results"]
    saved = {name: torch.load(tmp_path / f"{name}.pt", weights_only=True)
             for name in ("first", "cold", "swept")}
    assert torch.equal(saved["swept"]["text_embeds"], saved["cold"]["text_embeds"])
    assert not torch.equal(saved["swept"]["text_embeds"], saved["first"]["text_embeds"])
    assert torch.equal(saved["swept"]["video_embeds"], saved["cold"]["video_embeds"])


def test_edited_captions_reuse_the_video_embeddings(tmp_path, data_root, tiny_clip_files,
                                                    monkeypatch):
    import data_loader
    videos = data_root / "MSRVTT" / "videos" / "all"
    csv = tmp_path / "mine.csv"
    csv.write_text("video_path,caption\nvideo7010.mp4,a red clip\nvideo7011.mp4,a blue clip\n")
    first = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--csv", csv,
                "--video_root", videos)
    csv.write_text("video_path,caption\nvideo7010.mp4,something else\n"
                   "video7011.mp4,a blue clip\nvideo7011.mp4,one more\n")
    cold = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--csv", csv,
               "--video_root", videos, "--no_cache")
    monkeypatch.setattr(data_loader, "read_video", no_decoding)
    edited = run(tmp_path, data_root, tiny_clip_files["torchscript"], "--csv", csv,
                 "--video_root", videos, "--output_json", tmp_path / "r.json")
    assert edited["cache"]["hit"] and edited["counts"]["decoded_videos"] == 0
    assert edited["counts"]["queries"] == 3 and first["counts"]["queries"] == 2
    assert edited["results"] == cold["results"]
    assert json.loads((tmp_path / "r.json").read_text())["manifest"] == cold["manifest"]
