#!/usr/bin/env bash
# GPU check: prints encode, decode (CPU workers, and torchcodec on the GPU), end-to-end and
# similarity figures, and saves them.
#   bash bench/gpu_check.sh [--wheels DIR] [--out FILE] [--cpu-dry-run]
# Uses the machine's own torch. Packages it lacks (decord, openai-clip, ftfy, av, ...) are
# installed from DIR with no network; fill DIR beforehand with bench/fetch_gpu_wheels.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels="" out="bench/results/gpu_check.txt" dry=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) wheels="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --cpu-dry-run) dry=(--cpu-dry-run); shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (expected --wheels DIR, --out FILE, --cpu-dry-run)" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-python3}
# One interpreter for all the imports: clip's alone loads torch (seconds a process).
missing=($("$python" -c '
import importlib
for pair in ("decord:decord av:av ftfy:ftfy regex:regex clip:openai-clip "
             "pkg_resources:setuptools pandas:pandas tqdm:tqdm").split():
    module, package = pair.split(":")
    try:
        importlib.import_module(module)
    except Exception:
        print(package)
' 2>/dev/null || true))
if [ ${#missing[@]} -gt 0 ]; then
  if [ -z "$wheels" ]; then
    echo "gpu_check.sh: missing ${missing[*]}; pass --wheels DIR (see bench/fetch_gpu_wheels.sh)" >&2
    exit 2
  fi
  echo "installing from $wheels: ${missing[*]}"
  "$python" -m pip install -q --no-index --find-links "$wheels" "${missing[@]/setuptools/setuptools<81}"
fi
# torchcodec loads FFmpeg from the system. A machine without it can lend torchcodec the FFmpeg
# libraries in PyAV's wheel, linked under their plain names (libavcodec.so.62, ...).
if ! "$python" -c "from torchcodec._core import ops; assert ops.ffmpeg_major_version" 2>/dev/null; then
  avlibs=$("$python" -c "import av, pathlib; print(pathlib.Path(av.__file__).parent.parent / 'av.libs')" 2>/dev/null || true)
  if [ -n "$avlibs" ] && [ -d "$avlibs" ]; then
    links=$(mktemp -d)
    for f in "$avlibs"/*.so*; do
      b=${f##*/} n=${b%%-*} r=${b#*.so.}
      ln -sf "$f" "$links/$b"; ln -sf "$f" "$links/$n.so.${r%%.*}"
    done
    export LD_LIBRARY_PATH="$links${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "torchcodec: no system FFmpeg; using PyAV's ($avlibs)"
  fi
fi
mkdir -p "$(dirname "$out")"
PYTHONUNBUFFERED=1 "$python" bench/gpu_check.py "${dry[@]}" 2> >(grep -v -e "it/s" -e "batch/s" >&2) | tee "$out"
# Search at a million videos with stage 2 on the GPU: one built index (~21 GB under TMPDIR, deleted
# after), 50 queries, p50 and recall against the exhaustive search (the dry run: 2000 videos, CPU).
if [ ${#dry[@]} -gt 0 ]; then search=(--quick --device cpu); else search=(--sizes 1M --runs 1 --queries 50 --device cuda --threads 4); fi
PYTHONUNBUFFERED=1 "$python" bench/bench_search.py "${search[@]}" | tee -a "$out"
