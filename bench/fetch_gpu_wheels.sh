#!/usr/bin/env bash
# Fill DIR with the wheels bench/gpu_check.sh may need on an offline GPU machine
# (default target: Python 3.12, x86_64 Linux). Run where the package registry answers.
#   bash bench/fetch_gpu_wheels.sh DIR [PYTHON_VERSION]
set -euo pipefail
dir=${1:?usage: fetch_gpu_wheels.sh DIR [PYTHON_VERSION]} pyver=${2:-3.12}
mkdir -p "$dir"
python3 -m pip wheel -q --no-deps -w "$dir" openai-clip   # published as an sdist only
python3 -m pip download -q --only-binary=:all: --python-version "$pyver" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$dir" decord av ftfy wcwidth regex 'setuptools<81' pandas tqdm torchcodec
ls "$dir"
