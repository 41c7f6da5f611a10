"""flash-tree-attn: CUDA attention for tree-packed sequences.

Public API: flash_attn_varlen_func / flash_attn_func (flash-attn 2 compatible, plus the tree arrays),
flash_tree_attn.tree (layouts from trees and token groups), flash_tree_attn.reference (fp32 oracle).
"""
from ._version import __version__
from . import _ops  # noqa: F401  (registers the torch ops on import)
from .interface import flash_attn_func, flash_attn_varlen_func
from .wheel import build_info
from . import reference, tree

__all__ = ["__version__", "build_info", "flash_attn_func", "flash_attn_varlen_func", "reference", "tree"]
