"""The README's test command on a machine without FFmpeg's shared libraries: the tests that need
them skip, saying what to install, and the rest pass. Checked for real, with the libraries hidden
from the loader (tests/system_libraries.py), not by telling the tests they are missing."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system_libraries import FFMPEG_INSTALL, without_ffmpeg

REPO = Path(__file__).resolve().parent.parent


def test_without_ffmpeg_its_tests_skip_saying_what_to_install(tmp_path):
    selected = ["tests/test_video_decoders.py::test_decoders_give_identical_pixels",
                "tests/test_video_decoders.py::test_missing_ffmpeg_library_is_named",
                "tests/test_video_decoders.py::test_torchcodec_loads_when_the_lookup_misses_its_"
                "ffmpeg",
                "tests/test_bench_scripts.py::test_gpu_check_cpu_dry_run"]
    command = without_ffmpeg([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0",
                              "-q", "-rs", *selected], tmp_path)
    if command is None:
        pytest.skip("hiding FFmpeg's libraries needs root and unshare")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.splitlines()[-1].startswith("2 passed, 3 skipped")
    reasons = re.findall(r"^SKIPPED \[\d+\] (\S+): (.*)$", result.stdout, re.M)
    assert len(reasons) == 3
    for _, reason in reasons:
        assert reason.startswith(f"needs FFmpeg's shared libraries for torchcodec "
                                 f"({FFMPEG_INSTALL}): --decoder torchcodec: FFmpeg's shared "
                                 "library libavutil is not installed")
