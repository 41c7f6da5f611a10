"""Integrations of flash-tree-attn with training frameworks.

- :mod:`flash_tree_attn.integrations.packing` (pure PyTorch, no extra dependency): packs RL rollouts that share
  prefixes (GRPO groups, multi-turn agent trees) into one tree-packed batch and maps packed logits back to
  per-rollout token log-probs.
- :mod:`flash_tree_attn.integrations.transformers` (needs ``transformers``): registers the
  ``attn_implementation="tree_attention"`` attention function with transformers' attention registry.
  Import it explicitly; this package does not import transformers on its own.
"""
from .packing import PackedRollouts, pack_grpo_batch, pack_rollouts

__all__ = ["PackedRollouts", "pack_grpo_batch", "pack_rollouts"]
