"""Issue 18, parts 1, 3 and 4: Charades as the official evaluation reads it, bad inputs that
ended in a traceback or a silently wrong result, and a cache that outlives a prompt sweep.
Each test fails on the code before it."""
import json

import pytest

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
    assert f"error: --prompt {template!r} " in line and problem in line and "write a literal brace as {{ or }}" in line


def test_a_literal_brace_in_a_prompt_is_allowed():
    args = cli_module.parse_args(["--dataset", "charades", "--prompt", "{{x}} {}"])
    assert args.prompt == ["{{x}} {}"]
