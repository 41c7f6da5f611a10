#!/usr/bin/env bash
# Install what a release build needs inside the manylinux_2_28 (AlmaLinux 8) container of cibuildwheel:
# the CUDA toolkit pieces nvcc and torch's headers need, the host compiler that CUDA version accepts, and ccache.
# Called by build-wheels.yml as cibuildwheel's before-all:
#   bash tools/ci_install_cuda.sh <cuda major.minor> <gcc-toolset major>
set -euo pipefail

cuda="${1:?usage: ci_install_cuda.sh <cuda major.minor> <gcc-toolset major>}"
toolset="${2:?usage: ci_install_cuda.sh <cuda major.minor> <gcc-toolset major>}"
pkgver="${cuda/./-}"
case "$(uname -m)" in
  x86_64) repo_arch=x86_64 ;;
  aarch64) repo_arch=sbsa ;;
  *) echo "ci_install_cuda.sh: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

dnf -y install dnf-plugins-core
dnf config-manager --add-repo "https://developer.download.nvidia.com/compute/cuda/repos/rhel8/${repo_arch}/cuda-rhel8.repo"
# nvcc + runtime for the kernels; cuBLAS/cuSPARSE/cuSOLVER/cuRAND/NVRTC/NVTX headers for torch's ATen/cuda headers.
dnf -y install \
  "cuda-nvcc-${pkgver}" "cuda-cudart-devel-${pkgver}" "cuda-cccl-${pkgver}" "cuda-nvrtc-devel-${pkgver}" \
  "cuda-profiler-api-${pkgver}" "cuda-nvtx-${pkgver}" "libcublas-devel-${pkgver}" "libcusparse-devel-${pkgver}" \
  "libcusolver-devel-${pkgver}" "libcurand-devel-${pkgver}" \
  "gcc-toolset-${toolset}-gcc-c++"
ln -sfn "/usr/local/cuda-${cuda}" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
"/opt/rh/gcc-toolset-${toolset}/root/usr/bin/g++" --version | head -1

# ccache (EPEL). The build must not depend on it: without it, a pass-through stand-in takes its place.
if ! { dnf -y install epel-release && dnf -y install ccache; }; then
  echo "ci_install_cuda.sh: ccache unavailable; builds run uncached" >&2
  printf '#!/bin/sh\nexec "$@"\n' > /usr/local/bin/ccache
  chmod +x /usr/local/bin/ccache
fi
ccache --version | head -1 || true
