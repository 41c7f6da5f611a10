#!/usr/bin/env python
"""Benchmark: one GRPO forward+backward step of a ~0.5B random Qwen2-style model in transformers.

Three ways to run the same batch (same weights, same data, same loss):

* ``tree/ours``   tree-packed (each prompt once, responses branching off it), attn_implementation="tree_attention"
                  (flash-tree-attn kernels), tree arrays as forward kwargs;
* ``tree/flex``   the same tree-packed batch with attn_implementation="flex_attention" and a BlockMask built from
                  the same tree arrays (what trainers build on FlexAttention do today);
* ``padded/sdpa`` every rollout as its own row of a right-padded batch, attn_implementation="sdpa".

Default batch (GRPO-like): 8 prompts x 8 rollouts, prompt 2048 tokens, responses uniform in [512, 2048].
A step is processed in micro-batches of one prompt group (gradient accumulation over the groups) in every mode;
logits are computed only where a response token needs them (logits_to_keep), and log-probs by the same
memory-lean float32 log-softmax (packing.selective_logprobs), in every mode.
Reported: rollout tokens per second (the sum of all rollouts' prompt + response lengths, the work an unpacked
trainer sees, divided by the step time), the tokens actually run through the model, and peak GPU memory
(torch.cuda.max_memory_allocated over the timed steps, weights and gradients included). The loss of each mode is
printed as a cross-check: all three compute the same quantity.

    python tools/bench_transformers.py                    # full benchmark (H200: a few minutes)
    python tools/bench_transformers.py --quick            # small model and batch, smoke run
    python tools/bench_transformers.py --dry-run          # batch statistics only, no GPU needed
The table is printed last; results go to JSON (--out, default bench_transformers.json).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

try:
    import flash_tree_attn  # noqa: F401  (an installed build)
except ImportError:  # a source checkout: run from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flash_tree_attn.integrations.packing import pack_grpo_batch, selective_logprobs  # noqa: E402

MODES = ("tree/ours", "tree/flex", "padded/sdpa")

# ~0.48B parameters: Qwen2.5-0.5B-like depth, vocabulary and GQA ratio; 16 query heads (a power of two, so
# transformers' flex path keeps native GQA instead of repeating K/V) of dim 64, 2 KV heads.
FULL_MODEL = dict(hidden_size=1024, intermediate_size=3584, num_hidden_layers=24, num_attention_heads=16,
                  num_key_value_heads=2, head_dim=64, vocab_size=151936, tie_word_embeddings=True)
QUICK_MODEL = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=2, head_dim=64, vocab_size=32000, tie_word_embeddings=True)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small model and batch (2x4 rollouts, prompt 512)")
    ap.add_argument("--dry-run", action="store_true", help="print batch statistics and exit (CPU)")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--rollouts", type=int, default=None)
    ap.add_argument("--prompt-len", type=int, default=None)
    ap.add_argument("--response-len", type=int, nargs=2, default=None, metavar=("MIN", "MAX"))
    ap.add_argument("--layers", type=int, default=None, help="override the model depth")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--groups-per-microbatch", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per mode (compilation, allocator)")
    ap.add_argument("--iters", type=int, default=None, help="timed steps per mode (default 3, --quick 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench_transformers.json")
    args = ap.parse_args(argv)
    q = args.quick
    args.prompts = args.prompts or (2 if q else 8)
    args.rollouts = args.rollouts or (4 if q else 8)
    args.prompt_len = args.prompt_len or (512 if q else 2048)
    args.response_len = args.response_len or ([128, 512] if q else [512, 2048])
    args.iters = args.iters or (1 if q else 3)
    return args


def model_config(args):
    from transformers import Qwen2Config

    spec = dict(QUICK_MODEL if args.quick else FULL_MODEL)
    if args.layers:
        spec["num_hidden_layers"] = args.layers
    return Qwen2Config(**spec, max_position_embeddings=max(32768, args.prompt_len + args.response_len[1]),
                       attention_dropout=0.0, use_cache=False, rope_theta=1e6)


def make_batch(args, vocab):
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(vocab) for _ in range(args.prompt_len)] for _ in range(args.prompts)]
    responses = [[[rng.randrange(vocab) for _ in range(rng.randint(*args.response_len))]
                  for _ in range(args.rollouts)] for _ in range(args.prompts)]
    adv = []
    for group in responses:  # toy reward, normalised per group
        rew = torch.tensor([sum(t % 2 for t in r) / len(r) for r in group])
        adv.append((rew - rew.mean()) / (rew.std(unbiased=False) + 1e-4))
    return prompts, responses, adv


def microbatches(args, prompts, responses, adv):
    g = args.groups_per_microbatch
    for i in range(0, len(prompts), g):
        yield prompts[i:i + g], responses[i:i + g], torch.cat(adv[i:i + g])


def grpo_loss(logp_padded, mask, adv, n_rollouts_total):
    per_rollout = (logp_padded * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    return -(adv * per_rollout).sum() / n_rollouts_total


# --------------------------------------------------------------------------------------------------- the modes
def _tree_block_mask(packed, device):
    from torch.nn.attention.flex_attention import create_block_mask

    T = packed.num_packed_tokens
    start = packed.tree_dfs_order_start_q.to(device)
    end = packed.tree_dfs_order_end_k.to(device)
    cu = packed.cu_seq_lens.to(device)
    doc = torch.searchsorted(cu[1:].contiguous(), torch.arange(T, device=device, dtype=torch.int32), right=True)

    def tree_mask(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (doc[q_idx] == doc[kv_idx]) & (start[q_idx] <= end[kv_idx])

    return create_block_mask(tree_mask, None, None, T, T, device=device)


def step_tree(model, args, batch, device, flex: bool):
    prompts, responses, adv = batch
    n_total = sum(len(g) for g in responses)
    loss_sum, fwd_tokens = 0.0, 0
    for p, r, a in microbatches(args, prompts, responses, adv):
        packed = pack_grpo_batch(p, r, device=device)
        inputs = packed.model_inputs()
        if flex:
            inputs = {"input_ids": inputs["input_ids"], "position_ids": inputs["position_ids"], "use_cache": False,
                      "logits_to_keep": inputs["logits_to_keep"], "attention_mask": _tree_block_mask(packed, device)}
        logp = packed.token_logprobs(model(**inputs).logits)
        padded, mask = packed.pad(logp)
        loss = grpo_loss(padded, mask.float(), a.to(device), n_total)
        loss.backward()
        loss_sum += loss.item()
        fwd_tokens += packed.num_packed_tokens
    return loss_sum, fwd_tokens


def step_padded(model, args, batch, device):
    prompts, responses, adv = batch
    n_total = sum(len(g) for g in responses)
    loss_sum, fwd_tokens = 0.0, 0
    for p, r, a in microbatches(args, prompts, responses, adv):
        seqs = [pp + rr for pp, group in zip(p, r) for rr in group]
        plens = [len(pp) for pp, group in zip(p, r) for _ in group]
        L = max(map(len, seqs))
        ids = torch.zeros(len(seqs), L, dtype=torch.long)
        attn = torch.zeros(len(seqs), L, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        ids, attn = ids.to(device), attn.to(device)
        first = min(plens) - 1  # logits from the last prompt token on (earlier positions predict prompt tokens)
        keep = torch.arange(first, L - 1, device=device)
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False, logits_to_keep=keep).logits
        tgt = ids[:, first + 1:]
        flat = logits.reshape(-1, logits.shape[-1])  # the same memory-lean log-softmax as the packed modes
        logp = selective_logprobs(flat, torch.arange(flat.shape[0], device=device), tgt.reshape(-1)).view(tgt.shape)
        pos = torch.arange(first + 1, L, device=device)[None]
        mask = (pos >= torch.tensor(plens, device=device)[:, None]) & (pos < attn.sum(-1, keepdim=True))
        loss = grpo_loss(logp, mask.float(), a.to(device), n_total)
        loss.backward()
        loss_sum += loss.item()
        fwd_tokens += ids.numel()
    return loss_sum, fwd_tokens


def run_mode(mode, model, args, batch, device, rollout_tokens):
    import flash_tree_attn.integrations.transformers as fta_hf

    impl = {"tree/ours": fta_hf.ATTN_IMPLEMENTATION, "tree/flex": "flex_attention", "padded/sdpa": "sdpa"}[mode]
    model.set_attn_implementation(impl)

    def one_step():
        if mode == "padded/sdpa":
            out = step_padded(model, args, batch, device)
        else:
            out = step_tree(model, args, batch, device, flex=(mode == "tree/flex"))
        model.zero_grad(set_to_none=False)  # keep the gradient buffers: steady-state memory of a trainer
        return out

    try:
        for _ in range(args.warmup):
            one_step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times, loss, fwd = [], None, None
        for _ in range(args.iters):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss, fwd = one_step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated()
        step_s = sorted(times)[len(times) // 2]
        return {"mode": mode, "attn_implementation": impl, "status": "ok", "loss": loss, "step_s": step_s,
                "step_s_all": times, "rollout_tokens_per_s": rollout_tokens / step_s, "model_tokens": fwd,
                "peak_mem_gib": peak / 2**30, "step_mem_gib": (peak - base) / 2**30}
    except torch.cuda.OutOfMemoryError as e:
        return {"mode": mode, "attn_implementation": impl, "status": "OOM", "error": str(e).splitlines()[0]}
    finally:
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()


def print_table(results, header):
    print()
    print(header)
    cols = f"{'mode':<12} {'rollout tok/s':>14} {'speedup':>8} {'step (s)':>9} {'model tokens':>13} " \
           f"{'peak GiB':>9} {'step GiB':>9} {'loss':>12}"
    print(cols)
    print("-" * len(cols))
    ref = next((r for r in results if r["mode"] == "padded/sdpa" and r["status"] == "ok"), None)
    for r in results:
        if r["status"] != "ok":
            print(f"{r['mode']:<12} {r['status']:>14}  {r.get('error', '')}")
            continue
        sp = f"{r['rollout_tokens_per_s'] / ref['rollout_tokens_per_s']:.2f}x" if ref else "-"
        print(f"{r['mode']:<12} {r['rollout_tokens_per_s']:>14,.0f} {sp:>8} {r['step_s']:>9.3f} "
              f"{r['model_tokens']:>13,} {r['peak_mem_gib']:>9.2f} {r['step_mem_gib']:>9.2f} {r['loss']:>12.6f}")


def main(argv=None):
    args = parse_args(argv)
    cfg = model_config(args)
    prompts, responses, adv = make_batch(args, cfg.vocab_size)
    lens = [len(r) for g in responses for r in g]
    rollout_tokens = sum(args.prompt_len + n for n in lens)
    packed_tokens = args.prompts * args.prompt_len + sum(lens)  # upper bound: responses may share first tokens
    padded_tokens = sum(len(g) * (args.prompt_len + max(map(len, g))) for g in responses)
    header = (f"GRPO step: {args.prompts} prompts x {args.rollouts} rollouts, prompt {args.prompt_len}, responses "
              f"{args.response_len[0]}-{args.response_len[1]} (mean {sum(lens) / len(lens):.0f}); rollout tokens "
              f"{rollout_tokens:,}, tree-packed <= {packed_tokens:,}, padded {padded_tokens:,}")
    if args.dry_run:
        print(header)
        return {"header": header}
    if not torch.cuda.is_available():
        raise SystemExit("the benchmark needs a CUDA GPU (use --dry-run for batch statistics)")

    from transformers import AutoModelForCausalLM

    import flash_tree_attn.integrations.transformers  # noqa: F401  (registers "tree_attention")

    device = torch.device("cuda")
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(copy.deepcopy(cfg), attn_implementation="sdpa").to(device,
                                                                                                torch.bfloat16)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    header += (f"\nmodel: random Qwen2-style {n_params / 1e9:.3f}B params ({cfg.num_hidden_layers} layers, hidden "
               f"{cfg.hidden_size}, {cfg.num_attention_heads}/{cfg.num_key_value_heads} heads x {cfg.head_dim}, vocab "
               f"{cfg.vocab_size}), bf16, forward+backward, {args.groups_per_microbatch} group(s) per micro-batch; "
               f"{torch.cuda.get_device_name()}")
    batch = (prompts, responses, adv)
    results = []
    for mode in args.modes:
        print(f"running {mode} ...", flush=True)
        results.append(run_mode(mode, model, args, batch, device, rollout_tokens))
    out = {
        "args": vars(args), "header": header, "parameters": n_params, "results": results,
        "env": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                "gpu": torch.cuda.get_device_name(), "python": platform.python_version()},
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    print_table(results, header)
    return out


if __name__ == "__main__":
    main()
