"""pyproject.toml lists every module, and a fresh install works from another directory."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parent.parent
PUBLIC_IMPORTS = {
    "query_scoring": ["similarity_queryscoring", "similarity_meanpooling"],
    "metrics": ["t2v_metrics", "v2t_metrics"],
    "search_videos": ["parse_args", "main", "cli"],
    "clip_hitchhiker.search.video_index": ["VideoIndex"],
    "clip_hitchhiker.search.server": ["create_app", "SearchService"],
    "data_loader": ["sample_frame_indices", "read_video_decord", "MSRVTTDataset", "CSVDataset",
                    "download_msrvtt", "load_msrvtt_split"],
}


def setuptools_config():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_listed_modules_are_exactly_the_top_level_modules():
    config = setuptools_config()
    assert sorted(config["py-modules"]) == sorted(p.stem for p in REPO.glob("*.py"))
    packages = sorted(".".join(p.parent.relative_to(REPO).parts)
                      for p in REPO.glob("**/__init__.py")
                      if p.parent.relative_to(REPO).parts[0] not in ("tests", "bench"))
    assert sorted(config["packages"]) == packages
    assert packages[0] == "clip_hitchhiker" and all(p.startswith("clip_hitchhiker.")
                                                    for p in packages[1:])


def test_fresh_install_runs_from_another_directory(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ["pyproject.toml", "README.md", *setuptools_config()["py-modules"]]:
        name = name if "." in name else f"{name}.py"
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "clip_hitchhiker", source / "clip_hitchhiker",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)], check=True,
                   capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    help_text = subprocess.run([sys.executable, str(target / "bin" / "run-msr-retrieval"),
                                "--help"], cwd=elsewhere, env=env, capture_output=True,
                               text=True, timeout=120)
    assert help_text.returncode == 0, help_text.stderr[-2000:]
    assert "--num_frames" in help_text.stdout and "--skip_bad_videos" in help_text.stdout
    search_help = subprocess.run([sys.executable, str(target / "bin" / "search-videos"), "index",
                                  "--help"], cwd=elsewhere, env=env, capture_output=True,
                                 text=True, timeout=120)
    assert search_help.returncode == 0, search_help.stderr[-2000:]
    assert "--max_frames" in search_help.stdout and "--decoder" in search_help.stdout
    serve_help = subprocess.run([sys.executable, str(target / "bin" / "search-videos"), "serve",
                                 "--help"], cwd=elsewhere, env=env, capture_output=True,
                                text=True, timeout=120)
    assert serve_help.returncode == 0 and "--token" in serve_help.stdout, serve_help.stderr
    static = target / "clip_hitchhiker" / "search" / "static"
    assert sorted(p.name for p in static.iterdir()) == ["app.js", "index.html", "style.css"]
    imports = "; ".join(f"from {module} import {', '.join(names)}"
                        for module, names in PUBLIC_IMPORTS.items())
    check = (f"{imports}; import clip_hitchhiker.embedding_cache as c, query_scoring as q; "
             "from clip_hitchhiker.search.server import STATIC_FILES, _static_bytes; "
             "assert all(_static_bytes(n) for n, _ in STATIC_FILES.values()); "
             "print(c.__file__); print(q.__file__)")
    result = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(line.startswith(str(target)) for line in result.stdout.split())
