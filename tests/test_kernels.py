"""GPU correctness of the CUDA kernels against the fp32 reference (FlashAttention test convention).

For every output (out, lse, dq, dk, dv): max |ours - fp32 reference| must be at most 2x max |reference computed in
the input precision - fp32 reference| plus a small absolute tolerance. Inputs are fresh random draws each run;
the caching allocator is filled with NaN before each kernel call so an unwritten output element cannot pass.
The kernel path under test is FLASH_TREE_ATTN_TEST_PATH (sm80, the default, or sm90); test_kernel_paths_agree
compares the two paths with each other.
"""
from __future__ import annotations

import math
import os
import random
import re

import pytest
import torch

import flash_tree_attn as fta
from flash_tree_attn import _ops
from flash_tree_attn.reference import ERROR_ATOL, attention_ref, error_bound
from flash_tree_attn.tree import layout_from_segments

pytestmark = pytest.mark.gpu

_DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The dtypes compiled into the extension (both in a default build).
DTYPES = [_DTYPE_NAMES[n] for n in _ops.build_info().get("dtypes", ["bf16", "fp16"]) if n in _DTYPE_NAMES]


def compiled_head_dims() -> list[int]:
    return list(_ops.build_info().get("head_dims", [64, 128]))


def head_dims_to_test() -> list[int]:
    """Every compiled bucket plus head dims that are padded up to the next bucket."""
    buckets = compiled_head_dims()
    dims = set(buckets)
    for lo, hi in zip([0] + buckets[:-1], buckets):
        if hi - 8 > lo:
            dims.add(hi - 8 if hi - 8 > lo else hi)
    return sorted(dims)


def poison_allocator(*shapes_dtypes, device="cuda"):
    """Fill cached allocator blocks of the sizes the op is about to allocate with NaN, then free them."""
    held = [torch.full(shape, float("nan"), dtype=dt, device=device) for shape, dt in shapes_dtypes]
    del held


def assert_close_conv(name, ours, ref, ref_lowp):
    ours, ref, ref_lowp = ours.float(), ref.float(), ref_lowp.float()
    assert not torch.isnan(ours).any(), f"{name}: NaN in kernel output"
    err = (ours - ref).abs().max().item()
    err_lowp = (ref_lowp - ref).abs().max().item()
    bound = error_bound(name, err_lowp)
    assert err <= bound, f"{name}: max error {err:.3e} > 2 x {err_lowp:.3e} + {ERROR_ATOL[name]:.0e}"


def check_lse(ours, ref, ref_lowp):
    empty = torch.isneginf(ref)
    assert torch.equal(torch.isneginf(ours), empty), "lse must be -inf exactly for rows that see no key"
    assert torch.isfinite(ours[~empty]).all()
    keep = ~empty
    assert_close_conv("lse", ours[keep], ref[keep], ref_lowp[keep])


def random_tree(rng: random.Random, nodes: int, min_len: int, max_len: int):
    segs = [(-1, rng.randint(min_len, max_len))]
    for i in range(1, nodes):
        segs.append((rng.randrange(i), rng.randint(min_len, max_len)))
    return segs


def grpo_tree(rng: random.Random, prompt: int, n: int, rmin: int, rmax: int):
    return [(-1, prompt)] + [(0, rng.randint(rmin, rmax)) for _ in range(n)]


def make_qkv(total_q, total_k, hq, hkv, d, dtype, requires_grad=True):
    q = torch.randn(total_q, hq, d, device="cuda", dtype=dtype)
    k = torch.randn(total_k, hkv, d, device="cuda", dtype=dtype)
    v = torch.randn(total_k, hkv, d, device="cuda", dtype=dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def run_case(q, k, v, cu_q, cu_k, max_q, max_k, causal, start_q=None, end_k=None, backward=True,
             deterministic=False, before_call=None):
    """Runs ours and both references; checks out, lse and (optionally) dq, dk, dv. before_call() runs right before
    our forward and our backward."""
    hq, d = q.shape[1], q.shape[2]
    poison_allocator(((q.shape[0], hq, d), q.dtype), ((hq, q.shape[0]), torch.float32))
    if before_call is not None:
        before_call()
    out, lse, _ = fta.flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max_q, max_k, causal=causal, return_attn_probs=True, deterministic=deterministic,
        tree_dfs_order_start_q=start_q, tree_dfs_order_end_k=end_k)
    kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal, tree_dfs_order_start_q=start_q,
              tree_dfs_order_end_k=end_k, return_lse=True)
    out_ref, lse_ref = attention_ref(q, k, v, upcast=True, **kw)
    out_pt, lse_pt = attention_ref(q, k, v, upcast=False, **kw)
    assert_close_conv("out", out, out_ref, out_pt)
    check_lse(lse, lse_ref, lse_pt)
    if not backward:
        return out
    g = torch.randn_like(out)
    poison_allocator(((q.shape[0], hq, d), q.dtype), (k.shape, k.dtype), (v.shape, v.dtype),
                     ((q.shape[0], hq, d), torch.float32))
    if before_call is not None:
        before_call()
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), g)
    dq_ref, dk_ref, dv_ref = torch.autograd.grad(out_ref, (q, k, v), g.float())
    dq_pt, dk_pt, dv_pt = torch.autograd.grad(out_pt, (q, k, v), g)
    assert_close_conv("dq", dq, dq_ref, dq_pt)
    assert_close_conv("dk", dk, dk_ref, dk_pt)
    assert_close_conv("dv", dv, dv_ref, dv_pt)
    return out, (dq, dk, dv)


def sm90_available() -> bool:
    return "sm90" in _ops.build_info().get("kernel_paths", []) and torch.cuda.get_device_capability() == (9, 0)


@pytest.fixture(autouse=True)
def _kernel_path(monkeypatch):
    monkeypatch.setenv("FLASH_TREE_ATTN_PATH", os.environ.get("FLASH_TREE_ATTN_TEST_PATH", "sm80"))
    torch.manual_seed(random.randrange(1 << 30))  # fresh inputs every run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", head_dims_to_test())
@pytest.mark.parametrize("group", [1, 4])
def test_grpo_tree(dtype, d, group):
    rng = random.Random()
    trees = [grpo_tree(rng, rng.randint(100, 700), rng.randint(2, 6), 1, 400) for _ in range(2)]
    lay = layout_from_segments(trees, device="cuda")
    n = lay.total_tokens
    q, k, v = make_qkv(n, n, 2 * group, 2, d, dtype)
    run_case(q, k, v, lay.cu_seqlens, lay.cu_seqlens, lay.max_seqlen, lay.max_seqlen, True, lay.start_q, lay.end_k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [1, 8])
def test_random_deep_tree(dtype, group):
    rng = random.Random()
    trees = [random_tree(rng, rng.randint(5, 24), 1, 150) for _ in range(3)]
    lay = layout_from_segments(trees, device="cuda")
    n = lay.total_tokens
    d = compiled_head_dims()[0]
    q, k, v = make_qkv(n, n, 8, 8 // group, d, dtype)
    run_case(q, k, v, lay.cu_seqlens, lay.cu_seqlens, lay.max_seqlen, lay.max_seqlen, True, lay.start_q, lay.end_k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_tree_spans_many_walk_windows(dtype):
    """About 7000 tokens in one tree: every kernel's tile walk (TileWalk in csrc/block_range.h, 32 candidate
    blocks per ballot scan) needs several scans, with empty tiles of sibling branches between non-empty ones."""
    rng = random.Random()
    lay = layout_from_segments([random_tree(rng, 40, 50, 300)], device="cuda")
    n = lay.total_tokens
    d = compiled_head_dims()[0]
    q, k, v = make_qkv(n, n, 4, 2, d, dtype)
    run_case(q, k, v, lay.cu_seqlens, lay.cu_seqlens, lay.max_seqlen, lay.max_seqlen, True, lay.start_q, lay.end_k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chain_equals_causal(dtype):
    n = 1000 + random.randrange(500)
    lay = layout_from_segments([[(-1, n)]], device="cuda")
    d = compiled_head_dims()[-1]
    q, k, v = make_qkv(n, n, 4, 2, d, dtype)
    out_tree, grads_tree = run_case(q, k, v, lay.cu_seqlens, lay.cu_seqlens, n, n, True, lay.start_q, lay.end_k)
    out_causal = fta.flash_attn_varlen_func(q, k, v, lay.cu_seqlens, lay.cu_seqlens, n, n, causal=True)
    assert torch.equal(out_tree, out_causal), "a single chain must give exactly causal attention"


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_leaves_block_diagonal(dtype):
    # Independent segments packed in one sequence: each token sees only its own segment (block-diagonal).
    rng = random.Random()
    lens = [rng.randint(1, 300) for _ in range(9)]
    cu_seg = [0]
    for L in lens:
        cu_seg.append(cu_seg[-1] + L)
    n = cu_seg[-1]
    start_q = torch.arange(n, dtype=torch.int32, device="cuda")
    end_k = torch.cat([torch.full((L,), cu_seg[i + 1] - 1, dtype=torch.int32) for i, L in enumerate(lens)]).cuda()
    cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
    d = compiled_head_dims()[0]
    q, k, v = make_qkv(n, n, 2, 2, d, dtype)
    out, _ = run_case(q, k, v, cu, cu, n, n, True, start_q, end_k)
    # The same attention as independent causal sequences (one per segment): the tiles fall differently, so
    # the two results may differ by rounding; both must meet the reference bound (the tree one did above).
    cu_seg_t = torch.tensor(cu_seg, dtype=torch.int32, device="cuda")
    out_varlen = fta.flash_attn_varlen_func(q, k, v, cu_seg_t, cu_seg_t, max(lens), max(lens), causal=True)
    out_ref = attention_ref(q, k, v, cu_seg_t, cu_seg_t, causal=True)
    out_pt = attention_ref(q, k, v, cu_seg_t, cu_seg_t, causal=True, upcast=False)
    assert_close_conv("out", out_varlen, out_ref, out_pt)
    assert_close_conv("out", out, out_ref, out_pt)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tree_arrays_outside_the_dfs_rule(dtype):
    """Tree arrays drawn at random instead of from a tree: many tokens hide their own key (start_q > end_k) and
    whole rows see nothing. The kernels must still apply the rule exactly (start_q[query] <= end_k[key] with
    causality), including on the tile they take without loading its bounds (the sm90 forward's first tile,
    csrc/tile_classify.h), where a DFS-ordered tree always has a visible pair."""
    lens = [random.randint(1, 700) for _ in range(3)]
    n = sum(lens)
    cu = torch.tensor([0] + [sum(lens[: i + 1]) for i in range(3)], dtype=torch.int32, device="cuda")
    start_q = torch.randint(0, max(lens), (n,), dtype=torch.int32, device="cuda")
    end_k = torch.randint(0, max(lens), (n,), dtype=torch.int32, device="cuda")
    start_q[: n // 4] = max(lens)  # a run of rows that see no key at all
    q, k, v = make_qkv(n, n, 4, 2, compiled_head_dims()[-1], dtype)
    run_case(q, k, v, cu, cu, max(lens), max(lens), True, start_q, end_k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", head_dims_to_test())
def test_varlen_lengths_and_lq_ne_lk(dtype, causal, d):
    # Lengths 0..2k, not multiples of the block sizes; Lq < Lk, Lq > Lk (rows that see no key when causal); no
    # query at all for several key blocks (their dK and dV are zeros).
    rng = random.Random()
    lens_q = [0, 1, rng.randint(2, 63), 64, 129, rng.randint(300, 2048), rng.randint(1, 700), 0]
    lens_k = [0, 5, rng.randint(1, 63), 64, rng.randint(100, 400), rng.randint(300, 2048), 1, rng.randint(129, 500)]
    cu_q = torch.tensor([0] + list(torch.tensor(lens_q).cumsum(0)), dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0] + list(torch.tensor(lens_k).cumsum(0)), dtype=torch.int32, device="cuda")
    q, k, v = make_qkv(sum(lens_q), sum(lens_k), 4, 2, d, dtype)
    run_case(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_many_tiles_per_sm(dtype, causal):
    """Many times more query-block tiles than the GPU has SMs, sequences of random lengths (some empty) and GQA:
    every SM runs a long series of tiles, so a kernel that carries state from one tile to the next (a persistent
    CTA, a ring of pipeline stages) has to start each tile clean."""
    rng = random.Random()
    lens = [rng.choice([0, rng.randint(1, 128), rng.randint(129, 900)]) for _ in range(40)]
    lens[0] = 900
    hq, hkv = 16, 4
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert len(lens) * ((max(lens) + 127) // 128) * hq >= 10 * sms
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
    d = compiled_head_dims()[0]
    q, k, v = make_qkv(sum(lens), sum(lens), hq, hkv, d, dtype)
    run_case(q, k, v, cu, cu, max(lens), max(lens), causal)


@pytest.mark.parametrize("causal", [False, True])
def test_rows_past_a_sequence_stay_out_of_the_next(causal):
    """Kernels load whole tiles: the rows of a sequence's last query block past its end are the next sequence's
    (the sm90 backward loads them by TMA). Here those queries score beyond fp32's range against this sequence's
    keys while each sequence's own scores are O(1): every output and gradient must stay finite and equal what each
    sequence gives alone."""
    if torch.bfloat16 not in DTYPES:
        pytest.skip("needs the bf16 kernels: fp16 inputs of 1e19 are inf, and fp16 scores cannot leave fp32's range")
    l1, l2, h, big = 100, 90, 2, 1e19
    d = compiled_head_dims()[0]
    q, k, v = make_qkv(l1 + l2, l1 + l2, h, h, d, torch.bfloat16, requires_grad=False)
    k[:l1] *= big  # sequence 1: keys large, queries small, own scores O(1)
    q[:l1] /= big
    q[l1:] *= big  # sequence 2: queries large, keys small; its queries against sequence 1's keys overflow fp32
    k[l1:] /= big
    for t in (q, k, v):
        t.requires_grad_()
    cu = torch.tensor([0, l1, l1 + l2], device="cuda", dtype=torch.int32)
    out = fta.flash_attn_varlen_func(q, k, v, cu, cu, l1, l1, causal=causal)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for name, t in zip(("out", "dq", "dk", "dv"), (out, *grads)):
        assert torch.isfinite(t).all(), f"{name}: not finite"
    for lo, hi in ((0, l1), (l1, l1 + l2)):
        alone = [t[lo:hi].detach().clone().requires_grad_() for t in (q, k, v)]
        cu1 = torch.tensor([0, hi - lo], device="cuda", dtype=torch.int32)
        out1 = fta.flash_attn_varlen_func(*alone, cu1, cu1, hi - lo, hi - lo, causal=causal)
        for name, a, b in zip(("out", "dq", "dk", "dv"), (out, *grads),
                              (out1, *torch.autograd.grad(out1, alone, g[lo:hi]))):
            a, b = a[lo:hi].float(), b.float()
            # relative to each gradient's own scale (1e-19 .. 1e19 here); dQ is summed in either order
            assert (a - b).abs().max() <= 1e-2 * b.abs().max(), f"{name} of tokens {lo}..{hi} changed"


@pytest.mark.parametrize("ramp", [4.0, 16.0, 64.0])
def test_scores_growing_across_key_blocks(ramp):
    """Keys grow in magnitude towards the sequence's start, so a row's running max keeps rising as the kernels walk
    key blocks downward from the diagonal. The forwards keep a row's max while a block raises it by at most 8 (log2
    units, softmax.h); at head dim 128 a 128-key block raises it by a median of about 3.5, 6 and 19 for ramps 4, 16
    and 64 (a CPU count over these inputs), so in each case some blocks keep the max and others move it. Out, LSE
    and gradients must still match the reference."""
    n, hq, hkv = 1500, 4, 2
    d = compiled_head_dims()[-1]
    q, k, v = make_qkv(n, n, hq, hkv, d, DTYPES[0], requires_grad=False)
    k *= (1 + ramp * torch.linspace(1, 0, n, device="cuda")).to(k.dtype)[:, None, None]
    for t in (q, k, v):
        t.requires_grad_()
    cu = torch.tensor([0, n], device="cuda", dtype=torch.int32)
    run_case(q, k, v, cu, cu, n, n, causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_padded_batch(dtype, causal):
    B, Sq, Sk, hq, hkv = 3, 333, 517 if not causal else 333, 8, 2
    d = compiled_head_dims()[-1]
    q = torch.randn(B, Sq, hq, d, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(B, Sk, hkv, d, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(B, Sk, hkv, d, device="cuda", dtype=dtype, requires_grad=True)
    out, lse, _ = fta.flash_attn_func(q, k, v, causal=causal, return_attn_probs=True)
    out_ref, lse_ref = attention_ref(q, k, v, causal=causal, return_lse=True)
    out_pt, lse_pt = attention_ref(q, k, v, causal=causal, upcast=False, return_lse=True)
    assert out.shape == q.shape and lse.shape == (B, hq, Sq)
    assert_close_conv("out", out, out_ref, out_pt)
    check_lse(lse, lse_ref, lse_pt)
    g = torch.randn_like(out)
    for name, a, b, c in zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), g),
                             torch.autograd.grad(out_ref, (q, k, v), g.float()),
                             torch.autograd.grad(out_pt, (q, k, v), g)):
        assert_close_conv(name, a, b, c)


def test_padded_tree_batch():
    rng = random.Random()
    B, S = 2, 700
    trees = []
    for _ in range(B):
        p = rng.randint(50, 300)
        rest = S - p
        cut = rng.randint(1, rest - 1)
        trees.append([(-1, p), (0, cut), (0, rest - cut)])
    lay = layout_from_segments(trees, device="cuda")
    d = compiled_head_dims()[0]
    q, k, v = (torch.randn(B, S, 4, d, device="cuda", dtype=DTYPES[0], requires_grad=True) for _ in range(3))
    sq, ek = lay.start_q.view(B, S), lay.end_k.view(B, S)
    out = fta.flash_attn_func(q, k, v, causal=True, tree_dfs_order_start_q=sq, tree_dfs_order_end_k=ek)
    out_ref = attention_ref(q, k, v, causal=True, tree_dfs_order_start_q=sq, tree_dfs_order_end_k=ek)
    out_pt = attention_ref(q, k, v, causal=True, tree_dfs_order_start_q=sq, tree_dfs_order_end_k=ek, upcast=False)
    assert_close_conv("out", out, out_ref, out_pt)


def poison_small_blocks():
    """Leave the allocator's small cached blocks (512 bytes to 256 KB) full of nonzero words (NaN's bits), as a
    trainer's earlier tensors would: counters and scratch a call allocates without initialising then start from
    garbage."""
    torch.cuda.empty_cache()
    poison_allocator(*[((128 << i,), torch.float32) for i in range(10) for _ in range(4)])


# The sm90 forward's item counter on tree calls and the backward's dQ counters (first-store tickets, deterministic
# turns) are allocated without a fill: a kernel the call launches anyway zeroes them (the bounds kernel, the
# backward's preprocess). Garbage left in the allocator must not reach the results, with or without a tree, in
# either mode. Without those zeroings this test, then poisoning with -1, ran into a 60-second timeout with no result
# (bench_results/RESULTS.md, forty-seventh session).
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("tree", [False, True])
def test_counters_start_from_garbage(tree, deterministic):
    rng = random.Random()
    lay = layout_from_segments([grpo_tree(rng, rng.randint(100, 400), 3, 100, 300) for _ in range(2)],
                               device="cuda")
    n = lay.total_tokens
    start_q, end_k = (lay.start_q, lay.end_k) if tree else (None, None)
    for _ in range(2):
        q, k, v = make_qkv(n, n, 4, 2, compiled_head_dims()[0], DTYPES[0])
        run_case(q, k, v, lay.cu_seqlens, lay.cu_seqlens, lay.max_seqlen, lay.max_seqlen, True, start_q, end_k,
                 deterministic=deterministic, before_call=poison_small_blocks)


# 70000 query heads on 17500 KV heads (GQA 4): with one KV head for all of them, the sm80 backward sums each dK / dV
# over 140000 steps in one fp32 accumulator and the error reaches 25x the reference's (fp16, D=64; RESULTS.md,
# forty-fourth session); equal to it up to 1000 query heads per KV head. Sequences of 65 tokens keep that case's fp32
# reference within the GPU's memory at D=128.
@pytest.mark.parametrize("batch, heads_q, heads_kv, seq", [(70_000, 1, 1, 129), (1, 70_000, 17_500, 65)])
def test_more_sequences_or_heads_than_a_grid_dimension_takes(batch, heads_q, heads_kv, seq):
    """A CUDA grid's y and z take at most 65535 blocks each; kernels that launch CTAs per sequence or per (sequence,
    head) fold both into them (csrc/grid_units.h). 70000 copies of one tree, or 70000 query heads, must match the
    reference. 129 rows hold one whole 128-row or two whole 64-row query blocks and one row past them, so the sm80
    backward's dQ takes both its line order and its row-major order (dq_lines.h). The reference sees the batch as one
    sequence whose heads are the (sequence, head) pairs: one batched computation."""
    third = seq // 3
    lay = layout_from_segments([[(-1, third), (0, third), (0, seq - 2 * third)]], device="cuda")
    assert lay.total_tokens == seq
    start_q, end_k = lay.start_q.repeat(batch), lay.end_k.repeat(batch)
    cu = torch.arange(batch + 1, device="cuda", dtype=torch.int32) * seq
    d = compiled_head_dims()[0]
    q, k, v = make_qkv(batch * seq, batch * seq, heads_q, heads_kv, d, DTYPES[0])
    out, lse, _ = fta.flash_attn_varlen_func(q, k, v, cu, cu, seq, seq, causal=True, return_attn_probs=True,
                                             tree_dfs_order_start_q=start_q, tree_dfs_order_end_k=end_k)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)

    def fold(t):  # (batch * seq, heads, d) -> (seq, batch * heads, d): heads of one sequence, batch outermost
        return t.view(batch, seq, -1, d).transpose(0, 1).reshape(seq, -1, d)

    cu1 = torch.tensor([0, seq], device="cuda", dtype=torch.int32)

    def reference(upcast):
        o, l = attention_ref(fold(q), fold(k), fold(v), cu1, cu1, causal=True, tree_dfs_order_start_q=lay.start_q,
                             tree_dfs_order_end_k=lay.end_k, return_lse=True, upcast=upcast)
        o = o.view(seq, batch, heads_q, d).transpose(0, 1).reshape(batch * seq, heads_q, d)
        l = l.view(batch, heads_q, seq).transpose(0, 1).reshape(heads_q, batch * seq)
        return (o, l, *torch.autograd.grad(o, (q, k, v), g.float() if upcast else g))

    for name, ours, ref, ref_lowp in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), reference(True),
                                         reference(False)):
        assert_close_conv(name, ours, ref, ref_lowp)


@pytest.mark.parametrize("d", compiled_head_dims())
def test_deterministic_backward_is_bitwise_reproducible(d):
    rng = random.Random()
    lay = layout_from_segments([grpo_tree(rng, 700, 6, 200, 600)], device="cuda")
    n = lay.total_tokens
    q, k, v = make_qkv(n, n, 8, 2, d, DTYPES[0])
    g = torch.randn(n, 8, d, device="cuda", dtype=DTYPES[0])
    grads = []
    for _ in range(3):
        out = fta.flash_attn_varlen_func(q, k, v, lay.cu_seqlens, lay.cu_seqlens, n, n, causal=True,
                                         deterministic=True, tree_dfs_order_start_q=lay.start_q,
                                         tree_dfs_order_end_k=lay.end_k)
        grads.append(torch.autograd.grad(out, (q, k, v), g))
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.equal(a, b)
    # and the deterministic result is still correct
    run_case(q, k, v, lay.cu_seqlens, lay.cu_seqlens, n, n, True, lay.start_q, lay.end_k, deterministic=True)


def backward_kernel_names(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if "bwd_kernel" in e.name]


def kernel_namespace_path(name: str) -> str | None:
    """The kernel path (sm80 or sm90) of a kernel's profiler name: demangled (flash_tree_attn::sm90::...) or, for
    template names too long for the profiler to demangle, mangled (_ZN15flash_tree_attn4sm90...)."""
    m = re.search(r"flash_tree_attn(?:::|4)(sm80|sm90)", name)
    return m.group(1) if m else None


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", compiled_head_dims())
def test_deterministic_backward_varlen_gqa(d, causal):
    """Many sequences whose lengths are not multiples of the blocks (query blocks that run into the next
    sequence), keys past the queries (bottom-right causal) and more key blocks than SMs: bitwise the same on
    every run, correct, and computed by the path under test."""
    lens_q = [1, 77, 130, 1000, 1537, 640, 2048, 333] * 3
    lens_k = [lq + extra for lq, extra in zip(lens_q, [0, 5, 64, 129, 0, 7, 0, 250] * 3)]
    cu_q = torch.tensor([0] + lens_q, device="cuda", dtype=torch.int32).cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0] + lens_k, device="cuda", dtype=torch.int32).cumsum(0, dtype=torch.int32)
    tq, tk = int(cu_q[-1]), int(cu_k[-1])
    q, k, v = make_qkv(tq, tk, 8, 2, d, DTYPES[0])
    g = torch.randn(tq, 8, d, device="cuda", dtype=DTYPES[0])

    def grads():
        out = fta.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal=causal,
                                         deterministic=True)
        return torch.autograd.grad(out, (q, k, v), g)

    first = grads()
    for _ in range(3):
        for a, b in zip(first, grads()):
            assert torch.equal(a, b)
    names = backward_kernel_names(grads)
    path = os.environ["FLASH_TREE_ATTN_PATH"]
    if path == "auto":
        path = "sm90" if sm90_available() else "sm80"
    assert names and all(kernel_namespace_path(n) == path for n in names), names
    run_case(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), causal, deterministic=True)


# Shared memory per block of an A100 and of sm_86/89 GPUs (FLASH_TREE_ATTN_MAX_SMEM emulates them).
A100_SMEM, SM86_SMEM = 163 * 1024, 99 * 1024


@pytest.mark.parametrize("d, smem", [(d, A100_SMEM) for d in compiled_head_dims()] +
                         ([(64, SM86_SMEM)] if 64 in compiled_head_dims() else []))
def test_backward_configurations_of_smaller_gpus(monkeypatch, d, smem):
    """Where a faster sm80 backward configuration needs more shared memory than an A100 or an sm_86/89 GPU has,
    those run a smaller one; FLASH_TREE_ATTN_MAX_SMEM makes this GPU pick as they do."""
    monkeypatch.setenv("FLASH_TREE_ATTN_MAX_SMEM", str(smem))
    rng = random.Random()
    lay = layout_from_segments([grpo_tree(rng, rng.randint(100, 700), 4, 1, 400)], device="cuda")
    n = lay.total_tokens
    q, k, v = make_qkv(n, n, 4, 2, d, DTYPES[0])
    run_case(q, k, v, lay.cu_seqlens, lay.cu_seqlens, n, n, True, lay.start_q, lay.end_k)


def test_too_little_shared_memory_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FLASH_TREE_ATTN_PATH", "sm80")
    monkeypatch.setenv("FLASH_TREE_ATTN_MAX_SMEM", str(16 * 1024))
    q, k, v = (torch.randn(1, 128, 2, compiled_head_dims()[0], device="cuda", dtype=DTYPES[0]) for _ in range(3))
    with pytest.raises(RuntimeError, match="needs more shared memory per block than the GPU gives .*: 16384 bytes"):
        fta.flash_attn_func(q, k, v, causal=True)


def test_lse_gradient_flows():
    # d(sum(lse))/dq must match the reference when the LSE output is used in the loss.
    n, d = 300, compiled_head_dims()[0]
    cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
    q, k, v = make_qkv(n, n, 2, 2, d, DTYPES[0])
    out, lse, _ = fta.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True, return_attn_probs=True)
    (dq,) = torch.autograd.grad(out.float().sum() + lse.sum(), (q,))
    out_r, lse_r = attention_ref(q, k, v, cu, cu, causal=True, return_lse=True)
    (dq_r,) = torch.autograd.grad(out_r.sum() + lse_r.sum(), (q,))
    out_p, lse_p = attention_ref(q, k, v, cu, cu, causal=True, return_lse=True, upcast=False)
    (dq_p,) = torch.autograd.grad(out_p.float().sum() + lse_p.sum(), (q,))
    assert_close_conv("dq", dq, dq_r, dq_p)


def test_gradient_through_the_lse_alone():
    # With out unused its gradient never exists; the autograd function backs through the LSE with a zero dout.
    n, d = 300, compiled_head_dims()[0]
    cu = torch.tensor([0, n], dtype=torch.int32, device="cuda")
    q, k, v = make_qkv(n, n, 2, 2, d, DTYPES[0])
    _, lse, _ = fta.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True, return_attn_probs=True)
    dq, dk, dv = torch.autograd.grad(lse.sum(), (q, k, v))
    _, lse_r = attention_ref(q, k, v, cu, cu, causal=True, return_lse=True)
    dq_r, dk_r = torch.autograd.grad(lse_r.sum(), (q, k))
    _, lse_p = attention_ref(q, k, v, cu, cu, causal=True, return_lse=True, upcast=False)
    dq_p, dk_p = torch.autograd.grad(lse_p.sum(), (q, k))
    assert_close_conv("dq", dq, dq_r, dq_p)
    assert_close_conv("dk", dk, dk_r, dk_p)
    assert torch.equal(dv, torch.zeros_like(dv))


def test_opcheck():
    # torch.library.opcheck on real inputs: the schema, the autograd kernel of csrc/torch_binding.cpp, the fake
    # implementation of _ops.py and AOT dispatch (static and dynamic shapes) agree with the CUDA kernels.
    lay = layout_from_segments([[(-1, 70), (0, 50), (0, 61), (1, 19)]], device="cuda")
    n, d = lay.total_tokens, compiled_head_dims()[0]
    q, k, v = make_qkv(n, n, 4, 2, d, DTYPES[0])
    torch.library.opcheck(torch.ops.flash_tree_attn.fwd.default,
                          (q, k, v, lay.cu_seqlens, lay.cu_seqlens, lay.start_q, lay.end_k, n, n, d ** -0.5, True,
                           -1, -1, 0.0, False, _ops.kernel_path_from_env()))


def test_no_host_sync_in_call_path():
    n, d = 512, compiled_head_dims()[0]
    lay = layout_from_segments([[(-1, 200), (0, 150), (0, 162)]], device="cuda")
    q, k, v = make_qkv(n, n, 4, 4, d, DTYPES[0])
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = fta.flash_attn_varlen_func(q, k, v, lay.cu_seqlens, lay.cu_seqlens, lay.max_seqlen, lay.max_seqlen,
                                         causal=True, tree_dfs_order_start_q=lay.start_q,
                                         tree_dfs_order_end_k=lay.end_k)
        out.backward(torch.ones_like(out))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_torch_compile_fullgraph():
    n, d = 256, compiled_head_dims()[0]
    cu = torch.tensor([0, 100, n], dtype=torch.int32, device="cuda")
    q, k, v = make_qkv(n, n, 4, 2, d, DTYPES[0])

    @torch.compile(fullgraph=True)
    def f(q, k, v):
        return fta.flash_attn_varlen_func(q * 1.0, k, v, cu, cu, 156, 156, causal=True).float().sum()

    f(q, k, v).backward()
    out_eager = fta.flash_attn_varlen_func(q, k, v, cu, cu, 156, 156, causal=True)
    assert math.isclose(f(q, k, v).item(), out_eager.float().sum().item(), rel_tol=1e-3, abs_tol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available() or not sm90_available(),
                    reason="needs a compute capability 9.0 GPU and a build with the sm90 kernels")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", compiled_head_dims())
def test_kernel_paths_agree(monkeypatch, dtype, d):
    """The sm80 and sm90 paths agree, forward and backward, within the reference tolerance (2x the error of
    the reference computed in the input precision)."""
    rng = random.Random()
    trees = [grpo_tree(rng, rng.randint(100, 900), rng.randint(2, 8), 1, 500) for _ in range(2)]
    lay = layout_from_segments(trees, device="cuda")
    n = lay.total_tokens
    q, k, v = make_qkv(n, n, 8, 2, d, dtype)
    g = torch.randn(n, 8, d, device="cuda", dtype=dtype)
    tree = dict(tree_dfs_order_start_q=lay.start_q, tree_dfs_order_end_k=lay.end_k)
    results = {}
    for path in ("sm80", "sm90"):
        monkeypatch.setenv("FLASH_TREE_ATTN_PATH", path)
        poison_allocator(((n, 8, d), dtype), ((8, n), torch.float32), ((n, 8, d), torch.float32))
        out, lse, _ = fta.flash_attn_varlen_func(q, k, v, lay.cu_seqlens, lay.cu_seqlens, lay.max_seqlen,
                                                 lay.max_seqlen, causal=True, return_attn_probs=True, **tree)
        results[path] = (out, lse, *torch.autograd.grad(out, (q, k, v), g))
    kw = dict(cu_seqlens_q=lay.cu_seqlens, cu_seqlens_k=lay.cu_seqlens, causal=True, **tree)
    out_ref = attention_ref(q, k, v, upcast=True, **kw)
    out_pt = attention_ref(q, k, v, upcast=False, **kw)
    refs = (out_ref, *torch.autograd.grad(out_ref, (q, k, v), g.float()))
    lowps = (out_pt, *torch.autograd.grad(out_pt, (q, k, v), g))
    a, b = results["sm80"], results["sm90"]
    for name, x80, x90, ref, lowp in zip(("out", "dq", "dk", "dv"), (a[0], *a[2:]), (b[0], *b[2:]), refs, lowps):
        # bound: 2 x |lowp - ref| around the sm80 result
        assert_close_conv(name, x90, x80, x80.float() + (lowp.float() - ref.float()))
    assert torch.equal(torch.isneginf(a[1]), torch.isneginf(b[1]))
    keep = ~torch.isneginf(a[1])
    assert (a[1][keep] - b[1][keep]).abs().max().item() <= 1e-3
