#!/usr/bin/env bash
# Download the wheels a GPU host lacks for bench/bench_gpu.py's server row (and anything else that
# imports rewardserve.config / the HTTP app) into one folder that the device run carries.
#
# The GPU host (see README "GPU") has Python 3.12 with torch, transformers, grpcio, protobuf,
# prometheus-client, typer, anyio, h11, httpx, httpcore, PyYAML and typing-extensions, but no
# fastapi, starlette, uvicorn or pydantic; it cannot reach PyPI. The versions are this repo's pins
# (constraints.txt). --no-deps: each needed package is named here, so nothing the host already has is
# replaced. Run it where pip can reach PyPI:
#
#     bench/download_wheels.sh [FOLDER]        # default .device-wheels (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.device-wheels}"
PY="${PYTHON:-python3}"
# name==version for every package the server row imports that the host lacks (checked by importing
# rewardserve.app with only the host's packages: tests/unit/test_compute_imports.py covers the engine).
PINS=$(grep -iE '^(fastapi|starlette|uvicorn|pydantic|pydantic[-_]core|pydantic-settings|annotated-types|typing-inspection|python-dotenv|sniffio|grpcio-health-checking|grpcio-reflection)==' constraints.txt)
mkdir -p "$DEST"
# shellcheck disable=SC2086  # PINS is one requirement per word on purpose
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" $PINS
ls -la "$DEST"
du -sh "$DEST"
