"""Every command in README.md and docs/*.md is checked against the code, so that a renamed or
removed option fails here rather than for a reader.

Each shell command in a ```bash (or sh, shell, console) block is parsed by the argument parser
of the script it names (its parse_args(argv), or the parser its main() builds), with the files it
names created as placeholders in an empty folder; pytest commands must name test files and -k
words that exist; bash scripts must know every option given. The demo is run for real by
tests/test_demo.py and the test command by CI (.ci/run, checked here to be the README's). The
README's Python blocks are run, and every Python block must compile. Relative links must point
at files that exist, and anchors at headings that exist.
"""
import argparse
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
# Programs the documentation may name that are not this project's: they are not checked.
EXTERNAL = {"pip", "pip3", "apt-get", "apt", "sudo", "conda", "brew", "git", "cd", "export",
            "mkdir", "ls", "cat", "touch", "rm", "mv", "cp", "du", "df", "nvidia-smi", "ffmpeg",
            "ffprobe", "wget", "curl", "unzip", "tar", "echo", "uptime", "nproc", "time",
            "docker", "watch", "tail", "head", "kill", "ulimit"}
# Files that other branches add; links to them are checked once they exist.
PENDING_LINKS = {"docs/search.md", "docs/decoders.md", "docs/moments.md",
                 "docs/troubleshooting.md", "docs/troubleshooting-training.md"}


class Parsed(Exception):
    """Raised in place of running a script once its parser has accepted the arguments."""


# ----------------------------------------------------------------------------------------------
# Extraction


def fenced_blocks(path):
    """returns: [(language, code, first line number)] of the fenced blocks of a Markdown file
    (blocks indented under a list item are dedented by their fence's indentation)."""
    blocks, block = [], None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.lstrip()
        if block is None and stripped.startswith("```"):
            block = (stripped[3:].strip().lower(), len(line) - len(stripped), number + 1, [])
        elif block is not None and stripped.startswith("```"):
            blocks.append((block[0], "\n".join(block[3]), block[2]))
            block = None
        elif block is not None:
            block[3].append(line[block[1]:])
    assert block is None, f"{path.name}: a code block opened at line {block[2] - 1} never closes"
    return blocks


def shell_commands(code):
    """The commands of a shell block: continuation lines joined, comments dropped, split at
    &&, ||, ; and |. returns: [[token, ...]]."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"^\s*\$ ", "", line)
        tokens = shlex.split(line, comments=True)
        current = []
        for token in tokens:
            if token in ("&&", "||", ";", "|"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    return [c for c in commands if c]


# An inline `python ...` (or torchrun, bash, a console script) in the prose is a command too;
# one written as a synopsis ([optional], {choices}, a | b, PATH...) is not.
INLINE_COMMAND = re.compile(r"`((?:python3?|torchrun|bash|search-videos|run-msr-retrieval|"
                            r"train-msr-retrieval) [^`]+)`")
SYNOPSIS = re.compile(r"[\[\]{}|]|\.\.\.|…")


def inline_commands(path):
    """returns: [(line number, command)] of the inline commands outside the fenced blocks."""
    found, in_block = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
        elif not in_block:
            found += [(number, m) for m in INLINE_COMMAND.findall(line)
                      if not SYNOPSIS.search(m)]
    return found


# In a block with no language (or text), a line that starts with "$ " is a command, and so is
# one that starts like a command of this project; the other lines are its output.
UNTAGGED_COMMAND = re.compile(r"^(\$ |(python3?|torchrun|search-videos|run-msr-retrieval|"
                              r"train-msr-retrieval) )")


def untagged_commands(code):
    """returns: the command lines of an untagged block (continuations joined)."""
    lines = code.replace("\\\n", " ").splitlines()
    return "\n".join(line for line in lines if UNTAGGED_COMMAND.match(line))


def documented_commands():
    """returns: [(file name, line, tokens)] of every shell command in the documentation."""
    found = []
    for path in DOCS:
        name = str(path.relative_to(REPO))
        for language, code, line in fenced_blocks(path):
            if language in SHELL_LANGUAGES:
                found += [(name, line, tokens) for tokens in shell_commands(code)]
            elif language in ("", "text"):
                found += [(name, line, tokens)
                          for tokens in shell_commands(untagged_commands(code))]
        found += [(name, line, tokens) for line, command in inline_commands(path)
                  for tokens in shell_commands(command)]
    return found


# ----------------------------------------------------------------------------------------------
# Checks


def console_scripts():
    """{command: "module:function"} from pyproject.toml's [project.scripts]."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', section, re.M))


def load_script(path):
    spec = importlib.util.spec_from_file_location(f"_documented_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def strict_parsers(stop_after_parsing):
    """While active, parsers take no abbreviated options (a renamed option must not pass as the
    prefix of another), and, with stop_after_parsing, raise Parsed once they have parsed."""
    init, parse = argparse.ArgumentParser.__init__, argparse.ArgumentParser.parse_args

    def strict_init(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "allow_abbrev": False})

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise Parsed

    argparse.ArgumentParser.__init__ = strict_init
    if stop_after_parsing:
        argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        yield
    finally:
        argparse.ArgumentParser.__init__, argparse.ArgumentParser.parse_args = init, parse


def parse_with(module, argv, prog):
    """Parse argv with the module's own parser: its parse_args(argv) where it has one, else the
    parser that its main() builds (stopped as soon as it has parsed). A refusal fails the test
    with the parser's message."""
    has_parse_args = hasattr(module, "parse_args")
    stderr = io.StringIO()
    saved_argv, sys.argv = sys.argv, [prog, *argv]
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()), \
                strict_parsers(stop_after_parsing=not has_parse_args):
            if has_parse_args:
                module.parse_args(argv)
            else:
                module.main()
    except Parsed:
        pass
    except SystemExit as e:
        if e.code == 0 and "--help" in argv:
            return
        pytest.fail(f"{prog} refuses {shlex.join(argv)} (exit {e.code}): "
                    f"{stderr.getvalue().strip()[-600:]}")
    finally:
        sys.argv = saved_argv


# What a placeholder for a named file holds: enough for a parser that looks at it.
PLACEHOLDERS = {".csv": "video_path,caption\nclip.mp4,a placeholder caption\n", ".json": "{}\n",
                ".txt": "", ".pt": ""}


def create_placeholders(argv, folder):
    """Create, under folder, the relative files that argv names (checkpoints, CSVs, reports),
    as a reader would have them; nothing outside folder is touched."""
    for token in argv:
        path = Path(token)
        if path.suffix in PLACEHOLDERS and not path.is_absolute() and ".." not in path.parts:
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_text(PLACEHOLDERS[path.suffix])


def check_pytest(argv, where):
    """python -m pytest FILE... [-k WORDS]: the files exist and each -k word names a test."""
    files = [REPO / a for a in argv if a.endswith(".py")]
    for path in files:
        assert path.is_file(), f"{where}: {path.relative_to(REPO)} does not exist"
    if "-k" in argv:
        names = " ".join(re.findall(r"^def (test_\w+)", "".join(p.read_text() for p in files),
                                    re.M))
        for word in re.findall(r"\w+", argv[argv.index("-k") + 1]):
            if word not in ("and", "or", "not"):
                assert word in names, f"{where}: -k {word!r} selects no test in {files}"


def check_shell_script(argv, where):
    """bash SCRIPT.sh [--option ...]: the script exists and handles every option given."""
    script = REPO / argv[0]
    assert script.is_file(), f"{where}: {argv[0]} does not exist"
    handled = set(re.findall(r"^\s*(--[\w-]+)\)", script.read_text(), re.M))
    for option in (a for a in argv[1:] if a.startswith("--")):
        assert option in handled, f"{where}: {argv[0]} does not take {option}"


def check_command(tokens, where, folder):
    """One documented command, checked as the kind of command it is. returns: what was done
    ("parsed", "external", ...)."""
    while tokens and re.fullmatch(r"\w+=\S*", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    program, *argv = tokens
    if program in EXTERNAL:
        return "external"
    if program == "torchrun":  # torchrun's own options, then the script and its arguments
        script_at = next(i for i, a in enumerate(argv) if a.endswith(".py"))
        program, argv = "python", argv[script_at:]
    if program in ("bash", "sh"):
        check_shell_script(argv, where)
        return "script options checked"
    if program in console_scripts():
        module_name = console_scripts()[program].split(":")[0]
        create_placeholders(argv, folder)
        parse_with(importlib.import_module(module_name), argv, program)
        return "parsed"
    assert program in ("python", "python3"), (
        f"{where}: unknown program {program!r}; add it to EXTERNAL in tests/test_docs.py if it "
        "is not this project's")
    if argv[:2] == ["-m", "pytest"]:
        check_pytest(argv[2:], where)
        return "pytest targets checked"
    if argv[0] == "-c":  # a one-line computation: run it
        result = subprocess.run([sys.executable, "-c", argv[1]], cwd=REPO, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"{where}: {result.stderr[-1500:]}"
        return "ran"
    if argv[0] == "-m":
        module, prog, argv = importlib.import_module(argv[1]), f"python -m {argv[1]}", argv[2:]
    else:
        script = REPO / argv[0]
        assert script.is_file(), f"{where}: {argv[0]} does not exist"
        module, prog, argv = load_script(script), argv[0], argv[1:]
    create_placeholders(argv, folder)
    parse_with(module, argv, prog)
    return "parsed"


COMMANDS = documented_commands()


@pytest.mark.parametrize("doc, line, tokens", COMMANDS,
                         ids=[f"{d}:{n}:{' '.join(t)[:60]}" for d, n, t in COMMANDS])
def test_documented_command(doc, line, tokens, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # placeholders and anything a parser writes stay here
    check_command(tokens, f"{doc} line {line}: {shlex.join(tokens)}", tmp_path)


def test_the_readme_commands_are_found_and_checked(tmp_path, monkeypatch):
    """The extraction itself: the README's commands are all there, and none is skipped."""
    monkeypatch.chdir(tmp_path)
    readme = [(line, tokens) for doc, line, tokens in COMMANDS if doc == "README.md"]
    programs = [" ".join(t[:2]) for _, t in readme]
    assert "python run_msr_retrieval.py" in programs and "python -m" in programs
    assert sum(p == "python run_msr_retrieval.py" for p in programs) >= 5
    outcomes = {check_command(t, f"README.md line {n}", tmp_path) for n, t in readme}
    assert outcomes >= {"parsed", "external", "pytest targets checked"}


def test_a_renamed_option_fails():
    """The check is not vacuous: an option the parser does not know is a failure."""
    with pytest.raises(pytest.fail.Exception, match="unrecognized arguments: --num_frame"):
        check_command(["python", "run_msr_retrieval.py", "--num_frame", "16"], "here", REPO)
    with pytest.raises(pytest.fail.Exception, match="unrecognized arguments: --quik"):
        check_command(["python", "bench/bench_bootstrap.py", "--quik"], "here", REPO)
    with pytest.raises(AssertionError, match="does not take --dry-run"):
        check_command(["bash", "bench/gpu_check.sh", "--dry-run"], "here", REPO)
    with pytest.raises(AssertionError, match="selects no test"):
        check_command(["python", "-m", "pytest", "tests/test_training.py", "-k", "learnz"],
                      "here", REPO)


def test_the_readme_test_command_is_what_ci_runs():
    test_line = next(line for line in (REPO / "README.md").read_text().splitlines()
                     if line.rstrip().endswith("# test"))
    steps = [step.strip() for step in test_line.split("#")[0].split("&&")]
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert [line for line in ci_lines if line in steps] == steps  # all of them, in order


def test_the_readme_python_runs_and_prints_what_it_says(capsys):
    code = next(c for lang, c, _ in fenced_blocks(REPO / "README.md") if lang == "python")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert "'R1': 100.0" in printed[0] and "R1 100.0" in code
    assert "'R1': 64.0" in printed[1] and "R1 64.0" in code


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_python_blocks_compile(path):
    for language, code, line in fenced_blocks(path):
        if language == "python":
            compile(code, f"{path.name}:{line}", "exec")


def test_finetuning_loss_example_runs():
    code = next(c for lang, c, _ in fenced_blocks(REPO / "docs" / "finetuning.md")
                if lang == "python")
    namespace = {}
    exec(compile(code, "finetuning.md", "exec"), namespace)
    assert namespace["text_embeds"].grad is not None and namespace["loss"].ndim == 0


def heading_anchors(path):
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_relative_links_resolve(path):
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"\w+://", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        relative = linked.relative_to(REPO).as_posix() if linked.is_relative_to(REPO) else None
        if relative in PENDING_LINKS and not linked.exists():
            continue
        assert linked.exists(), f"{path.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in heading_anchors(linked), f"{path.name}: no heading for {target}"


def test_readme_stays_short():
    assert len((REPO / "README.md").read_text().encode()) <= 12_500


def test_the_readme_search_example_is_what_search_prints(tmp_path, monkeypatch, capsys):
    """The README's example output, made again as it says: the tests' segment videos and
    colour CLIP, indexed and searched with the README's two commands (and the model)."""
    import search_videos
    from tests.search_synthetic import build_segment_videos, save_colour_clip

    readme = (REPO / "README.md").read_text()
    example = readme.split("```text\nquery: a red video\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    build_segment_videos("videos")
    save_colour_clip("colour_clip.pt")
    search_videos.main(search_videos.parse_args(
        ["index", "videos", "--index", "my_index", "--model", "colour_clip.pt", "--device",
         "cpu", "--num_workers", "0"]))
    capsys.readouterr()
    search_videos.main(search_videos.parse_args(
        ["search", "--index", "my_index", "a red video", "-k", "3"]))
    printed = capsys.readouterr().out.replace(str(tmp_path.resolve()), "/tmp/search-example")
    assert printed == "query: a red video\n" + example


NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10}


def test_the_readme_install_sentence_is_what_pip_installs():
    """`pip install .` installs what pyproject.toml lists: the README names each module and
    command, and counts them right."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    modules = project["tool"]["setuptools"]["py-modules"]
    commands = list(project["project"]["scripts"])
    readme = (REPO / "README.md").read_text()
    sentence = readme[readme.index("`pip install .`"):].split("\n\n", 1)[0]
    named = set(re.findall(r"`([\w-]+)`", sentence))
    assert set(modules) <= named and set(commands) <= named
    counts = re.findall(r"\b(\w+) (?:top-level modules|commands)\b", sentence)
    assert [NUMBER_WORDS[c] for c in counts] == [len(modules), len(commands)], sentence


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_no_placeholder_is_left_for_a_figure(path):
    """A line that is only an UPPER_CASE token (SPEED_TABLE, BENCH_FIGURES) is a figure that was
    never filled in."""
    left = [line for line in path.read_text().splitlines()
            if re.fullmatch(r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)+", line.strip())]
    assert not left, f"{path.name} still holds {left}: fill in the measured figures"
