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
dest=$(cd "$dest" && pwd)  # the build runs elsewhere (below): a relative destination would miss
# torch takes the toolkit from the directory above the nvcc on PATH, which is wrong where that nvcc is a wrapper
# script (/usr/local/bin/nvcc on the development machines): nvcc itself says where it lives.
if [ -z "${CUDA_HOME:-}" ]; then
    top=$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1) || true
    [ -n "$top" ] && export CUDA_HOME=$(cd "$top" && pwd)
fi
# torch's ATen/cuda headers include cuSPARSE and cuBLAS headers that an nvcc-only toolkit lacks; the CUDA wheels
# that torch itself depends on carry them.
wheel_includes=$("$py" -c "import glob, nvidia; print(*glob.glob(nvidia.__path__[0] + '/*/include'))" 2>/dev/null) ||
    true
for inc in $wheel_includes; do
    if [ -f "$inc/cusparse.h" ]; then
        export CPLUS_INCLUDE_PATH="${CPLUS_INCLUDE_PATH:+$CPLUS_INCLUDE_PATH:}$inc"
    fi
done
rsync -a --delete --exclude .git --exclude '*.so' --exclude build --exclude .so --exclude .whl "$src/" "$work/src/"
export FLASH_TREE_ATTN_GIT_COMMIT=${FLASH_TREE_ATTN_GIT_COMMIT:-$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)}
cd "$work/src"
export FLASH_TREE_ATTN_CUDA_ARCHS=${FLASH_TREE_ATTN_CUDA_ARCHS:-90}
export MAX_JOBS=${MAX_JOBS:-2}
if ! "$py" setup.py build_ext --inplace --build-temp "$work/tmp" > "$work/build.log" 2>&1; then
    grep -m 10 -A 6 -E "error|Error" "$work/build.log" >&2 || tail -n 30 "$work/build.log" >&2
    echo "dev_build.sh: the build failed; its log is $work/build.log" >&2
    exit 1
fi
tail -n 2 "$work/build.log"
cp flash_tree_attn/_C*.so flash_tree_attn/_build_info.json "$dest/"
ls -la "$dest"
