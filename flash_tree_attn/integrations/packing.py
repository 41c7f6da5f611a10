"""Tree packing of RL rollouts for trainers (GRPO groups, multi-turn agent trees).

A GRPO step samples many responses per prompt. Packed as a prefix tree (trie), each shared prefix (the prompt,
or the common turns of a multi-turn episode) is computed once; every rollout is a root-to-leaf path of the tree.
This module turns token lists into

* the packed model inputs: ``input_ids`` and ``position_ids`` of shape ``(1, total_tokens)`` (positions are the
  depth of each token along its root path, so rotary embeddings equal those of the unpacked rollout),
* the tree arguments for the attention (``tree_dfs_order_start_q`` / ``tree_dfs_order_end_k``,
  ``cu_seq_lens_q`` / ``cu_seq_lens_k``, ``max_length_q`` / ``max_length_k``),
* the index that maps packed logits back to per-rollout next-token log-probs.

Labels are shifted along each rollout's own path, never across packed (DFS) neighbours: the log-prob of token
``t + 1`` of rollout ``r`` is read from the logits at the packed position of token ``t`` *of rollout r* (its trie
node). A trie node with several children therefore predicts several different targets, one per child path,
which is why a packed batch has no single ``labels`` row: do not pass ``labels=`` to the model, use
:meth:`PackedRollouts.token_logprobs` instead.

Pure PyTorch; the tree itself is built by :func:`flash_tree_attn.tree.pack_token_groups`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from collections.abc import Sequence

import torch

__all__ = ["PackedRollouts", "pack_rollouts", "pack_grpo_batch", "selective_logprobs", "ATTENTION_KWARG_NAMES"]

# The forward keyword arguments that carry the packing to the attention function. The first four are the ones
# transformers' own flash-attention path already plumbs through every decoder layer (FlashAttentionKwargs); the
# tree arrays ride along the same **kwargs.
ATTENTION_KWARG_NAMES = (
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    "tree_dfs_order_start_q",
    "tree_dfs_order_end_k",
)


def _as_token_list(seq, where: str) -> list[int]:
    if isinstance(seq, torch.Tensor):
        if seq.dim() != 1:
            raise ValueError(f"{where} must be a 1-D token tensor, got shape {tuple(seq.shape)}")
        if seq.dtype.is_floating_point or seq.dtype == torch.bool:
            raise ValueError(f"{where} must hold integer token ids, got {seq.dtype}")
        return seq.tolist()
    out = list(seq)
    for x in out:
        if isinstance(x, bool) or not isinstance(x, int):
            raise ValueError(f"{where} must hold integer token ids, got an element of type {type(x).__name__}")
    return out


def _as_mask(mask, length: int, where: str) -> torch.Tensor:
    m = mask if isinstance(mask, torch.Tensor) else torch.tensor(list(mask))
    m = m.detach().to("cpu").reshape(-1)
    if m.numel() != length:
        raise ValueError(f"{where} has {m.numel()} entries but its sequence has {length} tokens")
    return m.to(torch.bool)


@dataclass
class PackedRollouts:
    """A tree-packed batch of rollouts and the index back to each rollout.

    ``T`` packed tokens, ``G`` packed sequences (one tree per group), ``R`` rollouts, ``N`` targets (the tokens
    whose log-probs are wanted, rollout-major: all targets of rollout 0, then rollout 1, ...).
    """

    input_ids: torch.Tensor  # (1, T) int64
    position_ids: torch.Tensor  # (1, T) int64: depth of each token along its root path
    tree_dfs_order_start_q: torch.Tensor  # (T,) int32
    tree_dfs_order_end_k: torch.Tensor  # (T,) int32
    cu_seq_lens: torch.Tensor  # (G + 1,) int32: one packed sequence per group
    max_length: int  # longest packed sequence (Python int: no host sync in the forward)
    gather_index: tuple  # R tensors (L_r,) int64: packed position of every token of rollout r
    rollout_lengths: tuple  # R ints, L_r
    rollout_group: torch.Tensor  # (R,) int64: the group (packed sequence) of each rollout
    logit_index: torch.Tensor  # (N,) int64: packed position whose logits predict each target
    target_ids: torch.Tensor  # (N,) int64: the target token
    target_rollout: torch.Tensor  # (N,) int64: the rollout of each target
    target_position: torch.Tensor  # (N,) int64: index of the target token inside its rollout (>= 1)
    cu_targets: torch.Tensor  # (R + 1,) int64: targets of rollout r are [cu_targets[r], cu_targets[r + 1])
    targets_per_rollout: tuple  # R ints (host copy of the differences of cu_targets)
    keep_index: torch.Tensor  # (K,) int64: sorted unique logit_index, the only positions whose logits are needed
    keep_row: torch.Tensor  # (N,) int64: row of keep_index for each target

    # ---- sizes ---------------------------------------------------------------------------------------------
    @property
    def num_packed_tokens(self) -> int:
        return int(self.input_ids.shape[-1])

    @property
    def num_rollout_tokens(self) -> int:
        """Tokens the rollouts would have unpacked (without padding)."""
        return int(sum(self.rollout_lengths))

    @property
    def num_rollouts(self) -> int:
        return len(self.rollout_lengths)

    @property
    def num_targets(self) -> int:
        return int(self.target_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    # ---- model inputs --------------------------------------------------------------------------------------
    def attention_kwargs(self) -> dict:
        """The six forward keyword arguments that tell the attention about the packing and the tree."""
        return {
            "cu_seq_lens_q": self.cu_seq_lens,
            "cu_seq_lens_k": self.cu_seq_lens,
            "max_length_q": self.max_length,
            "max_length_k": self.max_length,
            "tree_dfs_order_start_q": self.tree_dfs_order_start_q,
            "tree_dfs_order_end_k": self.tree_dfs_order_end_k,
        }

    def model_inputs(self, logits_to_keep: bool = True) -> dict:
        """Keyword arguments for ``model(**packed.model_inputs())`` of a transformers causal LM loaded with
        ``attn_implementation="flash_tree_attn"``.

        No ``attention_mask`` (the batch is padding-free: the tree arrays are the mask) and ``use_cache=False``.
        With ``logits_to_keep=True`` the LM head only runs at :attr:`keep_index` (the positions whose logits
        some target needs), which :meth:`token_logprobs` understands; pass False for a base model without an
        LM head or to get logits at every packed position.
        """
        out = {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}
        out.update(self.attention_kwargs())
        if logits_to_keep:
            out["logits_to_keep"] = self.keep_index
        return out

    # ---- log-probs -----------------------------------------------------------------------------------------
    def token_logprobs(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Next-token log-probs of every target, (N,) float32, rollout-major (see :meth:`split` / :meth:`pad`).

        ``logits``: ``(1, K, V)`` (model run with ``logits_to_keep=keep_index``, the :meth:`model_inputs`
        default) or ``(1, T, V)`` (logits at every packed position); a leading batch dim of 1 is optional.
        The log-softmax normaliser is computed in float32 once per needed packed position (shared by all the
        rollouts whose paths pass through it), in chunks, without keeping a float32 copy of the logits for the
        backward pass (see :func:`selective_logprobs`).
        """
        if logits.dim() == 3:
            if logits.shape[0] != 1:
                raise ValueError(f"packed logits must have batch size 1, got shape {tuple(logits.shape)}")
            logits = logits[0]
        if logits.dim() != 2:
            raise ValueError(f"logits must be (1, positions, vocab) or (positions, vocab), got {tuple(logits.shape)}")
        n, k, t = logits.shape[0], self.keep_index.shape[0], self.num_packed_tokens
        if n == k:  # logits only at keep_index (equal to arange(T) when k == t, so both readings agree)
            rows = logits
        elif n == t:
            rows = logits.index_select(0, self.keep_index)
        else:
            raise ValueError(
                f"logits have {n} positions; expected {k} (logits_to_keep=keep_index) or {t} (every packed token)"
            )
        return selective_logprobs(rows, self.keep_row, self.target_ids, temperature)

    def split(self, flat: torch.Tensor) -> list:
        """Split an (N, ...) rollout-major per-target tensor into R tensors, one per rollout."""
        return list(torch.split(flat, list(self.targets_per_rollout), dim=0))

    def pad(self, flat: torch.Tensor, padding_value: float = 0.0) -> tuple:
        """(R, max_targets) padded copy of an (N,) per-target tensor, and the (R, max_targets) bool validity mask.

        Column j of row r is the j-th target of rollout r (the targets of a rollout in order of position).
        """
        width = max(self.targets_per_rollout) if self.targets_per_rollout else 0
        col = torch.arange(self.num_targets, device=flat.device) - self.cu_targets.to(flat.device)[
            self.target_rollout.to(flat.device)]
        out = flat.new_full((self.num_rollouts, width), padding_value)
        mask = torch.zeros((self.num_rollouts, width), dtype=torch.bool, device=flat.device)
        row = self.target_rollout.to(flat.device)
        out = out.index_put((row, col), flat)
        mask = mask.index_put((row, col), torch.ones_like(row, dtype=torch.bool))
        return out, mask

    def to(self, device, non_blocking: bool = False) -> PackedRollouts:
        kw = {}
        for f in fields(self):
            val = getattr(self, f.name)
            if isinstance(val, torch.Tensor):
                val = val.to(device, non_blocking=non_blocking)
            elif f.name == "gather_index":
                val = tuple(g.to(device, non_blocking=non_blocking) for g in val)
            kw[f.name] = val
        return PackedRollouts(**kw)


class _SelectiveLogprobs(torch.autograd.Function):
    """log_softmax(rows[row] / temperature)[target] for N (row, target) pairs, float32.

    Forward keeps only the input rows (as they are, e.g. bf16) and the float32 normalisers; the float32 softmax
    is recomputed chunk by chunk in backward, so peak memory stays near one copy of the logits instead of the
    three or four (float32 copy, float32 gradient, cast gradient) of ``torch.logsumexp(rows.float())``.
    """

    @staticmethod
    def forward(ctx, rows, row, target, temperature, chunk):
        lse = torch.empty(rows.shape[0], dtype=torch.float32, device=rows.device)
        for c0 in range(0, rows.shape[0], chunk):
            lse[c0:c0 + chunk] = torch.logsumexp(rows[c0:c0 + chunk].float() / temperature, dim=-1)
        picked = rows[row, target].float() / temperature
        ctx.save_for_backward(rows, lse, row, target)
        ctx.temperature, ctx.chunk = temperature, chunk
        return picked - lse[row]

    @staticmethod
    def backward(ctx, grad):
        rows, lse, row, target = ctx.saved_tensors
        temperature, chunk = ctx.temperature, ctx.chunk
        grad = grad.float()
        # d out_n / d rows[r, v] = ([r == row_n] [v == target_n] - [r == row_n] softmax(rows[r] / T)[v]) / T
        per_row = torch.zeros(rows.shape[0], dtype=torch.float32, device=rows.device).index_add_(0, row, grad)
        out = torch.empty_like(rows)
        for c0 in range(0, rows.shape[0], chunk):
            sl = slice(c0, c0 + chunk)
            prob = torch.exp(rows[sl].float() / temperature - lse[sl, None])
            out[sl] = (prob * (-per_row[sl, None] / temperature)).to(rows.dtype)
        out.index_put_((row, target), (grad / temperature).to(rows.dtype), accumulate=True)
        return out, None, None, None, None


def selective_logprobs(rows: torch.Tensor, row: torch.Tensor, target: torch.Tensor, temperature: float = 1.0,
                       chunk_elements: int = 1 << 28) -> torch.Tensor:
    """``log_softmax(rows.float() / temperature, -1)[row, target]`` as float32 (N,), memory-lean.

    rows: (K, V) logits (any float dtype); row, target: int64 (N,). Rows may be shared by several targets.
    Works in chunks of about ``chunk_elements`` logits.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    chunk = max(1, chunk_elements // max(1, rows.shape[-1]))
    return _SelectiveLogprobs.apply(rows, row, target, float(temperature), chunk)


def pack_rollouts(groups: Sequence, loss_masks: Sequence | None = None, device=None) -> PackedRollouts:
    """Pack rollouts that share prefixes into one tree per group.

    groups: a list of groups; each group a list of full token sequences (list of ints or 1-D integer tensor),
        e.g. prompt + response, or a whole multi-turn episode. Sequences of one group are merged into a prefix
        tree and packed as one sequence; rollouts are numbered group-major (group 0's sequences, then group 1's).
    loss_masks: optional, same nesting as ``groups``: per-token bools (or 0/1) marking the tokens whose
        log-probs are wanted (response / assistant tokens). Token 0 of a sequence is never a target (nothing
        predicts it). Default: every token after the first.
    device: where the returned tensors live (the packing itself runs on the CPU).
    """
    from .. import tree as _tree

    if len(groups) == 0:
        raise ValueError("pack_rollouts needs at least one group")
    token_groups, masks, rollout_group = [], [], []
    for g, group in enumerate(groups):
        if len(group) == 0:
            raise ValueError(f"group {g} has no sequences")
        gm = None if loss_masks is None else loss_masks[g]
        if gm is not None and len(gm) != len(group):
            raise ValueError(f"loss_masks[{g}] has {len(gm)} entries but group {g} has {len(group)} sequences")
        toks = []
        for s, seq in enumerate(group):
            ids = _as_token_list(seq, f"groups[{g}][{s}]")
            if len(ids) == 0:
                raise ValueError(f"groups[{g}][{s}] is empty")
            toks.append(ids)
            if gm is None:
                m = torch.ones(len(ids), dtype=torch.bool)
            else:
                m = _as_mask(gm[s], len(ids), f"loss_masks[{g}][{s}]")
            masks.append(m)
            rollout_group.append(g)
        token_groups.append(toks)

    layout = _tree.pack_token_groups(token_groups, device="cpu")
    input_ids = layout.input_ids.to("cpu", torch.int64).reshape(-1)
    gathers = [gi.to("cpu", torch.int64).reshape(-1) for gi in layout.gather_index]
    sequences = [torch.tensor(ids, dtype=torch.int64) for group in token_groups for ids in group]
    if len(gathers) != len(sequences):
        raise RuntimeError(f"tree.pack_token_groups returned {len(gathers)} gather indices for {len(sequences)} "
                           "sequences")
    for r, (gi, seq) in enumerate(zip(gathers, sequences)):
        if gi.shape != seq.shape or not torch.equal(input_ids[gi], seq):
            raise RuntimeError(f"tree.pack_token_groups: gather_index[{r}] does not reproduce sequence {r}")

    logit_index, target_ids, target_rollout, target_position, counts = [], [], [], [], []
    for r, (gi, seq, m) in enumerate(zip(gathers, sequences, masks)):
        pos = torch.nonzero(m[1:], as_tuple=False).reshape(-1) + 1  # target positions t + 1 inside rollout r
        logit_index.append(gi[pos - 1])  # read from the node of token t of THIS rollout
        target_ids.append(seq[pos])
        target_rollout.append(torch.full_like(pos, r))
        target_position.append(pos)
        counts.append(int(pos.numel()))
    logit_index = torch.cat(logit_index)
    keep_index, keep_row = torch.unique(logit_index, sorted=True, return_inverse=True)
    cu_targets = torch.zeros(len(counts) + 1, dtype=torch.int64)
    cu_targets[1:] = torch.cumsum(torch.tensor(counts, dtype=torch.int64), 0)

    total = input_ids.numel()
    packed = PackedRollouts(
        input_ids=input_ids.reshape(1, total),
        position_ids=layout.position_ids.to("cpu", torch.int64).reshape(1, total),
        tree_dfs_order_start_q=layout.start_q.to("cpu", torch.int32).reshape(-1).contiguous(),
        tree_dfs_order_end_k=layout.end_k.to("cpu", torch.int32).reshape(-1).contiguous(),
        cu_seq_lens=layout.cu_seqlens.to("cpu", torch.int32).reshape(-1).contiguous(),
        max_length=int(layout.max_seqlen),
        gather_index=tuple(gathers),
        rollout_lengths=tuple(int(s.numel()) for s in sequences),
        rollout_group=torch.tensor(rollout_group, dtype=torch.int64),
        logit_index=logit_index,
        target_ids=torch.cat(target_ids),
        target_rollout=torch.cat(target_rollout),
        target_position=torch.cat(target_position),
        cu_targets=cu_targets,
        targets_per_rollout=tuple(counts),
        keep_index=keep_index.to(torch.int64),
        keep_row=keep_row.to(torch.int64),
    )
    return packed if device is None else packed.to(device)


def pack_grpo_batch(prompts: Sequence, responses: Sequence, device=None, train_on_prompt: bool = False
                    ) -> PackedRollouts:
    """GRPO convenience: ``prompts[g]`` (token list) with its rollouts ``responses[g]`` (list of token lists).

    Rollout ``r`` is ``prompts[g] + responses[g][i]`` (group-major order); its targets are the response tokens
    (all tokens after the first with ``train_on_prompt=True``). Every group is one tree: the prompt is computed
    once and the responses branch off it (responses that start alike share those tokens too).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} response groups")
    groups, masks = [], []
    for g, (prompt, group) in enumerate(zip(prompts, responses)):
        p = _as_token_list(prompt, f"prompts[{g}]")
        if len(p) == 0:
            raise ValueError(f"prompts[{g}] is empty")
        seqs, ms = [], []
        for i, resp in enumerate(group):
            rr = _as_token_list(resp, f"responses[{g}][{i}]")
            seqs.append(p + rr)
            ms.append([train_on_prompt] * len(p) + [True] * len(rr))
        groups.append(seqs)
        masks.append(ms)
    return pack_rollouts(groups, masks, device=device)
