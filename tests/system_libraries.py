"""System libraries that pip cannot install, as the tests meet them.

torchcodec loads FFmpeg's shared libraries from the system (PyAV and decord bundle their own).
A test that needs them skips where they cannot be loaded, saying what to install; .ci/run installs
them, so CI runs every test. Whether they load is asked of torchcodec itself (loading its core,
as --decoder torchcodec does), not of an environment variable, so the answer is the machine's.
"""
import functools
import os
import re
import shutil
import subprocess

import pytest

FFMPEG_INSTALL = "apt-get install ffmpeg"
FFMPEG_LIBRARIES = ("avutil", "avcodec", "avformat", "avdevice", "avfilter", "swscale",
                    "swresample", "postproc")


@functools.lru_cache(maxsize=None)
def ffmpeg_problem():
    """None if torchcodec loads FFmpeg here, else why not (the decoder's own one-line error)."""
    from clip_hitchhiker.errors import ConfigError
    from clip_hitchhiker.video.decoders import load_torchcodec

    try:
        load_torchcodec()
    except ConfigError as e:
        return str(e)
    return None


needs_ffmpeg = pytest.mark.skipif(
    ffmpeg_problem() is not None,
    reason=f"needs FFmpeg's shared libraries for torchcodec ({FFMPEG_INSTALL}): "
           f"{ffmpeg_problem()}")


def torchcodec_param(*values):
    """pytest.param for a parametrised test's torchcodec case: skipped without FFmpeg."""
    return pytest.param(*values, marks=needs_ffmpeg)


def without_ffmpeg(argv, work_dir):
    """A command that runs argv with FFmpeg's shared libraries hidden from the loader, as on a
    machine without them: in a private mount namespace (so nothing outside it changes), an empty
    file over each library and a loader cache rebuilt without them over /etc/ld.so.cache, both
    made in work_dir. None where that cannot be done here (it needs root and unshare)."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ldconfig"):
        return None
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    listed = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout
    pattern = re.compile(rf"lib(?:{'|'.join(FFMPEG_LIBRARIES)})\.so\.\d+ .*=> (\S+)$")
    libraries = sorted({os.path.realpath(m.group(1)) for line in listed.splitlines()
                        if (m := pattern.search(line.strip()))})
    script = ('set -e; work="$1"; shift; : > "$work/empty"; '
              'for f in "${@:1:$LIBS}"; do mount --bind "$work/empty" "$f"; done; '
              'ldconfig -X -C "$work/ld.so.cache" 2>/dev/null; '
              'mount --bind "$work/ld.so.cache" /etc/ld.so.cache; '
              'shift "$LIBS"; exec "$@"')
    return ["env", f"LIBS={len(libraries)}", "unshare", "-m", "--propagation", "private",
            "bash", "-c", script, "bash", str(work_dir), *libraries, *argv]
