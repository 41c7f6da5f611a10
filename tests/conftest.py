import pytest
import torch


def _gpu_ready() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    from flash_tree_attn import _ops

    if not _ops.EXTENSION_LOADED:
        return False, f"extension not loaded: {_ops.EXTENSION_ERROR}"
    return True, ""


def pytest_collection_modifyitems(config, items):
    ready, why = _gpu_ready()
    if ready:
        return
    skip = pytest.mark.skip(reason=f"GPU test: {why}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
