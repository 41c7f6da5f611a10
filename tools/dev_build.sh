#!/usr/bin/env bash
# Developer build of the extension in a private copy of the tree (so concurrent edits or other builds in
# the checkout do not interfere), then copy the .so and build info back into <dest>/ (default .so/).
# Usage: PYTHON=venv/bin/python FLASH_TREE_ATTN_HEAD_DIMS=128 tools/dev_build.sh [dest]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$src/.so}
work=${FTA_BUILD_DIR:-/tmp/fta-devbuild}
py=${PYTHON:-python3}
mkdir -p "$work" "$dest"
rsync -a --delete --exclude .git --exclude '*.so' --exclude build --exclude .so --exclude .whl "$src/" "$work/src/"
export FLASH_TREE_ATTN_GIT_COMMIT=${FLASH_TREE_ATTN_GIT_COMMIT:-$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)}
cd "$work/src"
export FLASH_TREE_ATTN_CUDA_ARCHS=${FLASH_TREE_ATTN_CUDA_ARCHS:-90}
export MAX_JOBS=${MAX_JOBS:-2}
"$py" setup.py build_ext --inplace --build-temp "$work/tmp" 2>&1 | tail -n 30
cp flash_tree_attn/_C*.so flash_tree_attn/_build_info.json "$dest/"
ls -la "$dest"
