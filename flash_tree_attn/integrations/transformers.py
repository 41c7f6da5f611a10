"""transformers integration: ``attn_implementation="tree_attention"`` runs flash-tree-attn's kernels.

Importing this module registers, through transformers' public registries (``AttentionInterface`` and
``AttentionMaskInterface``; nothing is monkeypatched), one attention implementation::

    import flash_tree_attn.integrations.transformers as fta_hf          # registers "tree_attention"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=fta_hf.ATTN_IMPLEMENTATION)
    packed = pack_grpo_batch(prompts, responses, device="cuda")          # flash_tree_attn.integrations.packing
    logits = model(**packed.model_inputs()).logits
    logprobs = packed.token_logprobs(logits)                             # per rollout: packed.split(logprobs)

Why the name is not "flash_tree_attn": transformers (5.x, checked on 5.17 and 5.24) treats every
``attn_implementation`` whose name contains "flash" as a FlashAttention build and, at model load, tries to import
it as a flash-attn package or a hub kernel, which fails for any other registered function. A name without
"flash" is dispatched through the registry like "sdpa" or "flex_attention".

Forward keyword arguments (all optional; they travel through the decoder layers' ``**kwargs`` to the attention
function unchanged, in the Llama, Mistral, Qwen2 and Qwen3 families among others):

* ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (int32 ``(B + 1,)``), ``max_length_q`` / ``max_length_k`` (Python
  ints): the varlen description of a padding-free packed batch of shape ``(1, total)``. These are the names
  transformers' own flash-attention path uses, so ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)``
  batches work unchanged.
* ``tree_dfs_order_start_q`` / ``tree_dfs_order_end_k`` (int32 ``(total,)``): the tree arrays
  (see :func:`flash_tree_attn.flash_attn_varlen_func`). With them, ``position_ids`` must be the depth of each
  token (what :mod:`flash_tree_attn.tree` and :mod:`flash_tree_attn.integrations.packing` return), so rotary
  embeddings match the unpacked sequences. Without ``cu_seq_lens_*`` each batch row is one tree.
* ``deterministic`` (bool): the backward's ``deterministic=True`` (bitwise reproducible gradients). As in
  transformers' FlashAttention path, without it the environment variable ``FLASH_ATTENTION_DETERMINISTIC=1``
  turns it on.

Without tree arrays the implementation is plain (varlen) flash attention, like transformers' "flash_attention_2":
``cu_seq_lens_*`` when given; else the 2-D padding mask (unpadded, varlen); else, in eager mode, packing found in
``position_ids`` (a batch of one row whose positions restart); else each row is one causal sequence.
The model never builds a dense 4-D mask for this implementation: the registered mask function only forwards
the 2-D padding mask (or ``None``).
"""
from __future__ import annotations

import os

import torch

from ..interface import flash_attn_varlen_func

try:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "flash_tree_attn.integrations.transformers needs transformers>=4.48 (pip install transformers)"
    ) from e

__all__ = [
    "ATTN_IMPLEMENTATION",
    "TREE_KWARGS",
    "VARLEN_KWARGS",
    "flash_tree_attention_forward",
    "tree_attention_mask",
    "register",
]

ATTN_IMPLEMENTATION = "tree_attention"
VARLEN_KWARGS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
TREE_KWARGS = ("tree_dfs_order_start_q", "tree_dfs_order_end_k")


def _fail(msg: str):
    raise ValueError(f"flash_tree_attn ({ATTN_IMPLEMENTATION}): {msg}")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _as_int32(t: torch.Tensor, device) -> torch.Tensor:
    if t.dtype != torch.int32 or t.device != device:
        t = t.to(device=device, dtype=torch.int32)
    return t.contiguous()


def _uniform_cu(batch: int, length: int, device) -> torch.Tensor:
    return torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=device) if length else torch.zeros(
        batch + 1, dtype=torch.int32, device=device)


def _check_window(sliding_window, longest: int):
    # transformers' sliding window (sdpa/eager mask and flash's window_size=(w - 1, w - 1)) hides keys at a distance
    # >= w. In a sequence of at most w tokens (a tree path is never longer than its packed sequence) no key is that
    # far, so the window is a no-op; longer sequences would need windowed attention, which the kernels lack.
    if sliding_window is None or isinstance(sliding_window, bool):
        return
    if isinstance(longest, int) and longest > sliding_window:
        raise NotImplementedError(
            f"flash_tree_attn ({ATTN_IMPLEMENTATION}): sliding-window attention is not supported; this layer has "
            f"sliding_window={sliding_window} and a sequence of up to {longest} tokens, so the window would mask "
            "keys. Use sequences no longer than the window, or a model config with sliding_window=None if it was "
            "trained with full attention."
        )


def _maybe_downcast(q, k, v):
    # Under autocast a float32 tensor can reach attention (e.g. custom RoPE in fp32); the kernels take 16-bit inputs.
    if q.dtype == torch.float32 and torch.is_autocast_enabled(q.device.type):
        dt = torch.get_autocast_dtype(q.device.type)
        if dt in (torch.float16, torch.bfloat16):
            q, k, v = q.to(dt), k.to(dt), v.to(dt)
    return q, k, v


def _unpad_indices(mask: torch.Tensor):
    """2-D bool mask -> (flat indices of valid tokens, int32 cu_seqlens, max_seqlen as int). Synchronizes."""
    seqlens = mask.sum(dim=-1, dtype=torch.int32)
    idx = torch.nonzero(mask.reshape(-1), as_tuple=False).reshape(-1)
    cu = torch.nn.functional.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    return idx, cu, int(seqlens.max().item()) if seqlens.numel() else 0


def _cu_from_position_ids(position_ids: torch.Tensor, length: int):
    """Eager-mode detection of packing in a (1, S) position_ids row (positions restarting at their minimum).

    Returns (cu_seqlens int32, max_seqlen) or None when the row is a single arange. Raises when the positions are
    neither, e.g. tree depths passed without the tree arrays. Synchronizes (like transformers' flash path).
    """
    pos = position_ids.reshape(-1)
    if pos.numel() != length or length <= 1:
        return None
    lo = pos.min()
    step_ok = pos[1:] == pos[:-1] + 1
    restart = pos[1:] == lo
    if bool(step_ok.all()):
        return None
    if bool(pos[0] != lo) or bool((~(step_ok | restart)).any()):
        _fail(
            "position_ids are neither one increasing run nor several runs packed end to end (they look like tree "
            "depths). For a tree-packed batch pass tree_dfs_order_start_q / tree_dfs_order_end_k (and "
            "cu_seq_lens_q / cu_seq_lens_k / max_length_q / max_length_k) as forward keyword arguments."
        )
    starts = torch.nonzero(pos == lo, as_tuple=False).reshape(-1).to(torch.int32)
    cu = torch.cat([starts, torch.tensor([length], dtype=torch.int32, device=pos.device)])
    return cu, int((cu[1:] - cu[:-1]).max().item())


def flash_tree_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
):
    """transformers attention function. query (B, Hq, Sq, D), key/value (B, Hkv, Sk, D) -> ((B, Sq, Hq, D), None)."""
    if dropout:
        raise NotImplementedError(
            f"flash_tree_attn ({ATTN_IMPLEMENTATION}): attention dropout is not supported (got {dropout}); set the "
            "config's attention_dropout to 0.0"
        )
    if softcap:
        raise NotImplementedError(f"flash_tree_attn ({ATTN_IMPLEMENTATION}): attention logit softcapping is not "
                                  f"supported (got softcap={softcap})")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"flash_tree_attn ({ATTN_IMPLEMENTATION}): attention sinks (s_aux) are not supported")
    if kwargs.get("output_attentions"):
        _fail("output_attentions=True is not available (the kernels never materialize attention weights); use "
              "attn_implementation='eager' to inspect them")

    B, Hq, Sq, D = query.shape
    Hkv, Sk = key.shape[1], key.shape[2]
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    deterministic = kwargs.get("deterministic")
    if deterministic is None:  # transformers' FlashAttention path reads the same variable
        deterministic = os.environ.get("FLASH_ATTENTION_DETERMINISTIC", "0") == "1"
    deterministic = bool(deterministic)
    device = query.device

    # (B, H, S, D) -> (B, S, H, D): a view; the kernels take any row/head strides with a unit last stride.
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    q, k, v = _maybe_downcast(q, k, v)

    start_q, end_k = kwargs.get("tree_dfs_order_start_q"), kwargs.get("tree_dfs_order_end_k")
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
    has_tree = start_q is not None or end_k is not None
    has_varlen = cu_q is not None or cu_k is not None

    if has_tree or has_varlen:
        if attention_mask is not None:
            _fail("got a padding attention_mask together with cu_seq_lens_* / tree arrays; a packed batch is "
                  "padding-free: pass attention_mask=None")
        if has_tree:
            if start_q is None or end_k is None:
                _fail("pass both tree_dfs_order_start_q and tree_dfs_order_end_k, or neither")
            if not causal:
                _fail("tree attention is causal; this attention layer is not (is_causal=False)")
            if Sq != Sk:
                _fail(f"tree-packed batches are full forward passes (no KV cache): got {Sq} queries and {Sk} keys; "
                      "pass use_cache=False")
            start_q = _as_int32(start_q.reshape(-1), device)
            end_k = _as_int32(end_k.reshape(-1), device)
            if start_q.shape[0] != B * Sq or end_k.shape[0] != B * Sk:
                _fail(f"tree arrays must have one entry per packed token ({B * Sq}); got "
                      f"{tuple(start_q.shape)} and {tuple(end_k.shape)}")
        if has_varlen:
            if cu_q is None:
                cu_q = cu_k
            if cu_k is None:
                cu_k = cu_q
            if max_q is None:
                max_q = max_k
            if max_k is None:
                max_k = max_q
            if max_q is None:
                _fail("with cu_seq_lens_q / cu_seq_lens_k also pass max_length_q / max_length_k (Python ints: the "
                      "longest sequence) so the forward needs no host-device sync")
            if isinstance(max_q, torch.Tensor) or isinstance(max_k, torch.Tensor):
                _fail("max_length_q / max_length_k must be Python ints, not tensors (a tensor would force a "
                      "host-device sync in every layer)")
            cu_q, cu_k = _as_int32(cu_q, device), _as_int32(cu_k, device)
        else:  # tree arrays only: every batch row is one tree
            cu_q, cu_k, max_q, max_k = _uniform_cu(B, Sq, device), _uniform_cu(B, Sk, device), Sq, Sk
        _check_window(sliding_window, max_k)
        out = flash_attn_varlen_func(
            q.reshape(B * Sq, Hq, D), k.reshape(B * Sk, Hkv, D), v.reshape(B * Sk, Hkv, D),
            cu_q, cu_k, max_q, max_k, softmax_scale=scaling, causal=causal, deterministic=deterministic,
            tree_dfs_order_start_q=start_q, tree_dfs_order_end_k=end_k,
        )
        return out.view(B, Sq, Hq, D), None

    if attention_mask is not None:
        if attention_mask.dim() != 2:
            _fail(f"expected a 2-D padding mask (batch, keys) or None, got a mask of shape "
                  f"{tuple(attention_mask.shape)}; this implementation never uses dense masks")
        mask_k = attention_mask[:, -Sk:].to(device=device, dtype=torch.bool)
        idx_k, cu_k, max_k = _unpad_indices(mask_k)
        if Sq == Sk:
            idx_q, cu_q, max_q = idx_k, cu_k, max_k
        else:  # decoding with a KV cache: the queries are the last Sq tokens (left padding)
            idx_q, cu_q, max_q = _unpad_indices(mask_k[:, -Sq:])
        _check_window(sliding_window, max_k)
        qf = q.reshape(B * Sq, Hq, D).index_select(0, idx_q)
        kf = k.reshape(B * Sk, Hkv, D).index_select(0, idx_k)
        vf = v.reshape(B * Sk, Hkv, D).index_select(0, idx_k)
        out = flash_attn_varlen_func(qf, kf, vf, cu_q, cu_k, max_q, max_k, softmax_scale=scaling, causal=causal,
                                     deterministic=deterministic)
        full = out.new_zeros((B * Sq, Hq, D)).index_copy(0, idx_q, out)
        return full.view(B, Sq, Hq, D), None

    packed = None
    position_ids = kwargs.get("position_ids")
    if B == 1 and Sq == Sk and position_ids is not None and not _compiling():
        packed = _cu_from_position_ids(position_ids, Sq)
    if packed is not None:
        cu, mx = packed
        cu_q = cu_k = cu
        max_q = max_k = mx
    else:
        cu_q, cu_k, max_q, max_k = _uniform_cu(B, Sq, device), _uniform_cu(B, Sk, device), Sq, Sk
    _check_window(sliding_window, max_k)
    out = flash_attn_varlen_func(
        q.reshape(B * Sq, Hq, D), k.reshape(B * Sk, Hkv, D), v.reshape(B * Sk, Hkv, D),
        cu_q, cu_k, max_q, max_k, softmax_scale=scaling, causal=causal, deterministic=deterministic,
    )
    return out.view(B, Sq, Hq, D), None


def tree_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function=None,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
):
    """Mask function registered for this implementation: never a dense mask.

    Returns None (no padding: the kernels' causal / tree masking applies) or the 2-D boolean padding mask
    (batch, kv_length), which the attention function unpads. Without a registered mask function transformers
    would drop a user's padding mask, so this one is registered alongside the attention function.
    """
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:].to(torch.bool)
    # In eager mode an all-ones mask means no padding; under torch.compile keep it (reading it would break the graph).
    if not _compiling() and attention_mask.shape[-1] == kv_length and bool(attention_mask.all()):
        return None
    return attention_mask


def register(name: str = ATTN_IMPLEMENTATION) -> str:
    """Register the attention function and its mask function under ``name`` (idempotent); returns ``name``.

    Done at import with the default name. ``name`` must not contain "flash" (see the module docstring).
    """
    if "flash" in name:
        raise ValueError(
            f"cannot register {name!r}: transformers treats attention implementations whose name contains 'flash' "
            "as FlashAttention builds and refuses to load a model with them; pick a name without 'flash'"
        )
    AttentionInterface.register(name, flash_tree_attention_forward)
    AttentionMaskInterface.register(name, tree_attention_mask)
    return name


register()
