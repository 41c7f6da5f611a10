#!/usr/bin/env python
"""Example: a few GRPO steps of a tiny random Qwen2-style model, tree-packed vs unpacked.

Everything is synthetic and local (a model built from a config, no download): each step samples GRPO groups
(a prompt and several responses of random lengths, some starting alike), scores them with a toy reward, and
takes one policy-gradient step with group-normalised advantages. Two copies of the same initial model train on
the same batches:

* packed: one forward/backward over the tree-packed batch (attn_implementation="tree_attention": the prompt of a
  group is computed once, responses branch off it), log-probs mapped back per rollout by the packing helper;
* unpacked: every rollout as its own row of a right-padded batch (attn_implementation="sdpa").

Both print the same losses (up to rounding); the packed run processes fewer tokens.

    python tools/train_tree_grpo.py                                   # GPU, our kernels
    python tools/train_tree_grpo.py --device cpu --attn reference --dtype float32   # CPU smoke test

``--attn reference`` replaces the kernel call with a shim over flash_tree_attn.reference.attention_ref (pure
PyTorch, slow): a smoke test of the plumbing, not the fast path.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import torch

try:
    import flash_tree_attn  # noqa: F401  (an installed build)
except ImportError:  # a source checkout: run from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flash_tree_attn.integrations.packing import pack_grpo_batch  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--attn", choices=["kernel", "reference"], default="kernel",
                    help="kernel: flash-tree-attn CUDA kernels; reference: test-only pure-PyTorch shim (CPU smoke)")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--groups", type=int, default=4, help="prompts per step")
    ap.add_argument("--rollouts", type=int, default=8, help="responses per prompt")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--response-len", type=int, nargs=2, default=[32, 256], metavar=("MIN", "MAX"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=str, default=None, help="write the results here")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
def make_config(args):
    from transformers import Qwen2Config

    head_dim = args.hidden // args.heads
    return Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=head_dim, max_position_embeddings=max(4096, args.prompt_len + args.response_len[1]),
        tie_word_embeddings=False, attention_dropout=0.0, use_cache=False,
    )


def sample_batch(rng: random.Random, args):
    """Synthetic GRPO groups. Half the responses of a group share their first tokens (as sampled responses often
    do), so the trees branch below the prompt too."""
    prompts, responses = [], []
    for _ in range(args.groups):
        prompts.append([rng.randrange(args.vocab) for _ in range(args.prompt_len)])
        stem = [rng.randrange(args.vocab) for _ in range(4)]
        group = []
        for i in range(args.rollouts):
            n = rng.randint(*args.response_len)
            r = [rng.randrange(args.vocab) for _ in range(n)]
            if i % 2 == 0:
                k = min(len(stem), n)
                r[:k] = stem[:k]
            group.append(r)
        responses.append(group)
    return prompts, responses


def advantages(responses, vocab):
    """Toy reward (share of tokens in the lower half of the vocabulary), normalised within each group."""
    adv = []
    for group in responses:
        rew = torch.tensor([sum(t < vocab // 2 for t in r) / len(r) for r in group], dtype=torch.float32)
        adv.append((rew - rew.mean()) / (rew.std(unbiased=False) + 1e-4))
    return torch.cat(adv)


def grpo_loss(logp_padded, mask, adv):
    """-mean_r A_r * mean_t log p(token t of response r): the on-policy GRPO policy-gradient loss."""
    per_rollout = (logp_padded * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    return -(adv * per_rollout).mean()


def packed_step(model, prompts, responses, adv, device):
    packed = pack_grpo_batch(prompts, responses, device=device)
    logits = model(**packed.model_inputs()).logits
    logp = packed.token_logprobs(logits)
    padded, mask = packed.pad(logp)
    loss = grpo_loss(padded, mask.float(), adv)
    loss.backward()
    return loss, packed.num_packed_tokens, packed.num_rollout_tokens


def unpacked_step(model, prompts, responses, adv, device):
    seqs, plens = [], []
    for p, group in zip(prompts, responses):
        for r in group:
            seqs.append(p + r)
            plens.append(len(p))
    L = max(map(len, seqs))
    ids = torch.zeros(len(seqs), L, dtype=torch.long)
    attn = torch.zeros(len(seqs), L, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
    ids, attn = ids.to(device), attn.to(device)
    logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
    pos = torch.arange(1, L, device=device)[None]  # position of each target token
    lens = attn.sum(-1, keepdim=True)
    mask = (pos >= torch.tensor(plens, device=device)[:, None]) & (pos < lens)
    loss = grpo_loss(logp, mask.float(), adv)
    loss.backward()
    return loss, len(seqs) * L, sum(map(len, seqs))


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def install_reference_attention():
    """Test-only: route the integration's kernel call to the pure-PyTorch reference (CPU smoke runs)."""
    import flash_tree_attn.integrations.transformers as fta_hf
    from flash_tree_attn.reference import attention_ref

    def reference_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                         causal=False, tree_dfs_order_start_q=None, tree_dfs_order_end_k=None, **unused):
        out = attention_ref(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, causal=causal,
                            softmax_scale=softmax_scale, tree_dfs_order_start_q=tree_dfs_order_start_q,
                            tree_dfs_order_end_k=tree_dfs_order_end_k)
        return out.to(q.dtype)

    fta_hf.flash_attn_varlen_func = reference_varlen
    print("!! REFERENCE attention: pure-PyTorch test shim (flash_tree_attn.reference), NOT the fast path !!")


def main(argv=None):
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM

    import flash_tree_attn.integrations.transformers as fta_hf

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.attn == "kernel" and device.type != "cuda":
        raise SystemExit("--attn kernel needs --device cuda; use --device cpu --attn reference for a CPU smoke run")
    if args.attn == "reference":
        install_reference_attention()

    torch.manual_seed(args.seed)
    cfg = make_config(args)
    base = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="sdpa").to(device, dtype)
    n_params = sum(p.numel() for p in base.parameters())
    runs = {}
    modes = (("packed", fta_hf.ATTN_IMPLEMENTATION, packed_step), ("unpacked", "sdpa", unpacked_step))
    for name, impl, step_fn in modes:
        model = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation=impl).to(device, dtype)
        model.load_state_dict(base.state_dict())
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
        rng = random.Random(args.seed)  # identical batches for both runs
        losses, times, fwd_tokens, rollout_tokens = [], [], 0, 0
        for _ in range(args.steps):
            prompts, responses = sample_batch(rng, args)
            adv = advantages(responses, args.vocab).to(device)
            _sync(device)
            t0 = time.perf_counter()
            loss, n_fwd, n_roll = step_fn(model, prompts, responses, adv, device)
            opt.step()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            times.append(time.perf_counter() - t0)
            losses.append(loss.item())
            fwd_tokens += n_fwd
            rollout_tokens += n_roll
        timed = sorted(times[1:] if len(times) > 1 else times)  # the first step includes warm-up
        median_s = timed[len(timed) // 2]  # median: a new sequence length can trigger a one-off autotune
        runs[name] = {
            "attn_implementation": impl,
            "losses": losses,
            "step_s": times,
            "tokens_per_step_forward": fwd_tokens / args.steps,
            "rollout_tokens_per_step": rollout_tokens / args.steps,
            "rollout_tokens_per_s": rollout_tokens / args.steps / median_s,
        }
    result = {"config": vars(args), "parameters": n_params, **runs}

    print(f"model: random Qwen2-style, {n_params / 1e6:.2f}M parameters, {args.layers} layers, GQA "
          f"{args.heads}/{args.kv_heads} heads; {args.groups} prompts x {args.rollouts} rollouts per step; "
          "attention: " + ("REFERENCE shim (not the fast path)" if args.attn == "reference"
                           else "flash-tree-attn kernels"))
    print(f"{'step':>4} {'loss packed':>14} {'loss unpacked':>14} {'|diff|':>10}")
    for i, (a, b) in enumerate(zip(runs["packed"]["losses"], runs["unpacked"]["losses"])):
        print(f"{i:>4} {a:>14.6f} {b:>14.6f} {abs(a - b):>10.2e}")
    for name in ("packed", "unpacked"):
        r = runs[name]
        print(f"{name:>9}: {r['tokens_per_step_forward']:>9.0f} tokens through the model per step "
              f"({r['rollout_tokens_per_step']:.0f} rollout tokens), {r['rollout_tokens_per_s']:>10.0f} rollout "
              f"tokens/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
