"""CPU tests of flash_tree_attn.reference against a per-element brute force written here."""
import math
import time

import numpy as np
import pytest
import torch

from flash_tree_attn import reference
from flash_tree_attn.reference import attention_ref, count_visible_pairs, visible_mask


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------

def random_tree_arrays(n, rng):
    """Token-level random tree of n tokens laid out in DFS order: (start, end, parent) lists.

    Built by a random walk: each new token's parent is the previous token or one of its ancestors, which is
    exactly what a depth-first layout allows.
    """
    parent = [-1] * n
    path = []
    for t in range(n):
        if path:
            keep = int(rng.integers(0, len(path) + 1))
            del path[keep:]
        parent[t] = path[-1] if path else -1
        path.append(t)
    end = list(range(n))
    for t in range(n - 1, -1, -1):
        p = parent[t]
        if p >= 0:
            end[p] = max(end[p], end[t])
    return list(range(n)), end, parent


def brute_attention(q, k, v, cu_q, cu_k, causal, scale, start=None, end=None):
    """Per-element float64 loops: out (total_q, Hq, Dv), lse (Hq, total_q). Rule written out independently."""
    q, k, v = q.double(), k.double(), v.double()
    total_q, hq, _ = q.shape
    hkv, dv = k.shape[1], v.shape[2]
    group = hq // hkv
    out = torch.zeros(total_q, hq, dv, dtype=torch.float64)
    lse = torch.full((hq, total_q), -math.inf, dtype=torch.float64)
    for b in range(len(cu_q) - 1):
        lq, lk = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
        for h in range(hq):
            hk = h // group
            for i in range(lq):
                gi = cu_q[b] + i
                keys = []
                for j in range(lk):
                    gj = cu_k[b] + j
                    ok = True
                    if causal and j > i + lk - lq:
                        ok = False
                    if start is not None and not (start[gi] <= end[gj]):
                        ok = False
                    if ok:
                        keys.append(gj)
                if not keys:
                    continue
                s = [float((q[gi, h] * k[gj, hk]).sum()) * scale for gj in keys]
                mx = max(s)
                w = [math.exp(x - mx) for x in s]
                z = sum(w)
                lse[h, gi] = math.log(z) + mx
                for wt, gj in zip(w, keys):
                    out[gi, h] += wt / z * v[gj, hk]
    return out, lse


def make_qkv(total_q, total_k, hq, hkv, d, dtype=torch.float32, seed=0, dv=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(total_q, hq, d, generator=g, dtype=torch.float32).to(dtype)
    k = torch.randn(total_k, hkv, d, generator=g, dtype=torch.float32).to(dtype)
    v = torch.randn(total_k, hkv, dv or d, generator=g, dtype=torch.float32).to(dtype)
    return q, k, v


def cu(lens):
    return torch.tensor([0] + list(np.cumsum(lens)), dtype=torch.int32)


def tree_for(lens, rng):
    start, end = [], []
    for n in lens:
        s, e, _ = random_tree_arrays(n, rng)
        start += s
        end += e
    return torch.tensor(start, dtype=torch.int32), torch.tensor(end, dtype=torch.int32)


def assert_lse_equal(a, b, atol=1e-5):
    a, b = a.double(), b.double()
    assert torch.equal(torch.isinf(a), torch.isinf(b))
    fin = torch.isfinite(b)
    torch.testing.assert_close(a[fin], b[fin], atol=atol, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Forward against brute force
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hq,hkv", [(2, 2), (4, 2), (4, 1)])
@pytest.mark.parametrize("mode", ["full", "causal", "tree"])
def test_varlen_matches_brute_force(hq, hkv, mode):
    rng = np.random.default_rng(hq * 10 + hkv)
    lens = [5, 1, 9, 0, 7]
    cq = cu(lens)
    q, k, v = make_qkv(sum(lens), sum(lens), hq, hkv, 8, seed=hq + hkv)
    causal = mode != "full"
    start = end = None
    if mode == "tree":
        start, end = tree_for(lens, rng)
    out, lse = attention_ref(q, k, v, cq, cq, causal=causal, tree_dfs_order_start_q=start,
                             tree_dfs_order_end_k=end, return_lse=True)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert out.shape == q.shape and lse.shape == (hq, q.shape[0])
    ref_out, ref_lse = brute_attention(q, k, v, cq.tolist(), cq.tolist(), causal, 1 / math.sqrt(8),
                                       None if start is None else start.tolist(),
                                       None if end is None else end.tolist())
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    assert_lse_equal(lse, ref_lse)


@pytest.mark.parametrize("with_tree", [False, True])
def test_bottom_right_causal_lq_ne_lk(with_tree):
    # Fewer queries than keys (decode-like), more queries than keys (top rows see nothing), and empty sides.
    lq = [3, 6, 0, 2, 4]
    lk = [7, 4, 3, 0, 4]
    cq, ck = cu(lq), cu(lk)
    q, k, v = make_qkv(sum(lq), sum(lk), 4, 2, 8, seed=3, dv=16)
    start = end = None
    if with_tree:
        g = torch.Generator().manual_seed(5)
        start = torch.randint(0, 6, (sum(lq),), generator=g, dtype=torch.int32)
        end = torch.randint(0, 6, (sum(lk),), generator=g, dtype=torch.int32)
    scale = 0.37
    out, lse = attention_ref(q, k, v, cq, ck, causal=True, softmax_scale=scale, tree_dfs_order_start_q=start,
                             tree_dfs_order_end_k=end, return_lse=True)
    ref_out, ref_lse = brute_attention(q, k, v, cq.tolist(), ck.tolist(), True, scale,
                                       None if start is None else start.tolist(),
                                       None if end is None else end.tolist())
    assert out.shape == (sum(lq), 4, 16)
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    assert_lse_equal(lse, ref_lse)
    # Sequence 1 has 6 queries and 4 keys: its first two rows see nothing.
    assert torch.isinf(lse[:, 3:5]).all() and (out[3:5] == 0).all()


def test_bottom_right_alignment_last_query_sees_all_keys():
    m = visible_mask(2, 5, causal=True)
    assert m.tolist() == [[True, True, True, True, False], [True] * 5]
    m = visible_mask(4, 2, causal=True)
    assert m.tolist() == [[False, False], [False, False], [True, False], [True, True]]
    assert visible_mask(3, 3, causal=False).all()


def test_padded_matches_varlen_and_brute_force():
    rng = np.random.default_rng(7)
    bsz, sq, sk, hq, hkv, d = 3, 5, 7, 4, 2, 8
    g = torch.Generator().manual_seed(1)
    q = torch.randn(bsz, sq, hq, d, generator=g)
    k = torch.randn(bsz, sk, hkv, d, generator=g)
    v = torch.randn(bsz, sk, hkv, d, generator=g)
    start = torch.tensor(rng.integers(0, 8, (bsz, sq)), dtype=torch.int32)
    end = torch.tensor(rng.integers(0, 8, (bsz, sk)), dtype=torch.int32)
    for causal, tree in ((False, False), (True, False), (True, True)):
        kw = dict(tree_dfs_order_start_q=start, tree_dfs_order_end_k=end) if tree else {}
        out, lse = attention_ref(q, k, v, causal=causal, return_lse=True, **kw)
        assert out.shape == (bsz, sq, hq, d) and lse.shape == (bsz, hq, sq)
        kwv = dict(tree_dfs_order_start_q=start.reshape(-1), tree_dfs_order_end_k=end.reshape(-1)) if tree else {}
        out_v, lse_v = attention_ref(q.reshape(-1, hq, d), k.reshape(-1, hkv, d), v.reshape(-1, hkv, d),
                                     cu([sq] * bsz), cu([sk] * bsz), causal=causal, return_lse=True, **kwv)
        torch.testing.assert_close(out, out_v.reshape(bsz, sq, hq, d))
        torch.testing.assert_close(lse, lse_v.reshape(hq, bsz, sq).permute(1, 0, 2))
        ref_out, ref_lse = brute_attention(q.reshape(-1, hq, d), k.reshape(-1, hkv, d), v.reshape(-1, hkv, d),
                                           cu([sq] * bsz).tolist(), cu([sk] * bsz).tolist(), causal,
                                           1 / math.sqrt(d), start.reshape(-1).tolist() if tree else None,
                                           end.reshape(-1).tolist() if tree else None)
        torch.testing.assert_close(out.reshape(-1, hq, d).double(), ref_out, atol=1e-5, rtol=1e-5)
        assert_lse_equal(lse.permute(1, 0, 2).reshape(hq, -1), ref_lse)


def test_default_scale_and_explicit_scale():
    lens = [6]
    q, k, v = make_qkv(6, 6, 2, 2, 16, seed=9)
    a = attention_ref(q, k, v, cu(lens), cu(lens), causal=True)
    b = attention_ref(q, k, v, cu(lens), cu(lens), causal=True, softmax_scale=0.25)
    torch.testing.assert_close(a, b)
    c = attention_ref(q, k, v, cu(lens), cu(lens), causal=True, softmax_scale=0.5)
    assert not torch.allclose(a, c)


def test_tokens_after_last_sequence_get_zeros():
    q, k, v = make_qkv(6, 4, 2, 2, 8, seed=2)
    out, lse = attention_ref(q, k, v, cu([4]), cu([4]), causal=True, return_lse=True)
    assert out.shape == (6, 2, 8) and (out[4:] == 0).all() and torch.isinf(lse[:, 4:]).all()


def test_row_chunking_matches_unchunked(monkeypatch):
    rng = np.random.default_rng(11)
    lens = [13, 9]
    q, k, v = make_qkv(22, 22, 2, 1, 8, seed=4)
    start, end = tree_for(lens, rng)
    kw = dict(causal=True, tree_dfs_order_start_q=start, tree_dfs_order_end_k=end, return_lse=True)
    out_a, lse_a = attention_ref(q, k, v, cu(lens), cu(lens), **kw)
    monkeypatch.setattr(reference, "_MAX_CHUNK_ELEMS", 40)
    out_b, lse_b = attention_ref(q, k, v, cu(lens), cu(lens), **kw)
    torch.testing.assert_close(out_a, out_b)
    assert_lse_equal(lse_a, lse_b)


# ----------------------------------------------------------------------------------------------------------
# Fully masked rows
# ----------------------------------------------------------------------------------------------------------

def test_fully_masked_rows_zero_output_inf_lse_zero_grads():
    # Sequence 0: tree arrays that hide every key from query rows 1 and 3. Sequence 1: 5 queries, 2 keys (rows
    # 0..2 see nothing). Sequence 2: queries but no keys.
    lq, lk = [4, 5, 3], [4, 2, 0]
    q, k, v = make_qkv(sum(lq), sum(lk), 2, 1, 8, dtype=torch.float64, seed=6)
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    start = torch.tensor([0, 9, 1, 9] + [0] * 5 + [0] * 3, dtype=torch.int32)
    end = torch.tensor([3, 3, 3, 3] + [5, 5], dtype=torch.int32)
    out, lse = attention_ref(q, k, v, cu(lq), cu(lk), causal=True, tree_dfs_order_start_q=start,
                             tree_dfs_order_end_k=end, return_lse=True)
    masked = torch.tensor([1, 3, 4, 5, 6, 9, 10, 11])
    assert (out[masked] == 0).all()
    assert torch.isinf(lse[:, masked]).all() and (lse[:, masked] < 0).all()
    assert torch.isfinite(out).all()
    seen = torch.ones(out.shape[0], dtype=torch.bool)
    seen[masked] = False
    assert torch.isfinite(lse[:, seen]).all()
    # Loss through out and through the finite part of lse.
    loss = (out * torch.randn_like(out)).sum() + (lse[:, seen] * 0.3).sum()
    dq, dk, dv = torch.autograd.grad(loss, (q, k, v))
    for g in (dq, dk, dv):
        assert torch.isfinite(g).all()
    assert (dq[masked] == 0).all()
    assert dq[seen].abs().sum() > 0


def test_all_rows_masked_backward_is_zero_not_nan():
    q, k, v = make_qkv(3, 0, 2, 2, 8, seed=1)
    q.requires_grad_(True)
    out = attention_ref(q, k, v, cu([3]), cu([0]), causal=True)
    assert (out == 0).all()
    out.sum().backward()
    assert (q.grad == 0).all()


# ----------------------------------------------------------------------------------------------------------
# Dtypes
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_upcast_false_keeps_input_dtype(dtype):
    rng = np.random.default_rng(0)
    lens = [7, 5]
    q, k, v = make_qkv(12, 12, 4, 2, 16, dtype=dtype, seed=8)
    start, end = tree_for(lens, rng)
    kw = dict(causal=True, tree_dfs_order_start_q=start, tree_dfs_order_end_k=end, return_lse=True)
    out_lo, lse_lo = attention_ref(q, k, v, cu(lens), cu(lens), upcast=False, **kw)
    out_hi, lse_hi = attention_ref(q, k, v, cu(lens), cu(lens), upcast=True, **kw)
    assert out_lo.dtype == dtype and lse_lo.dtype == torch.float32
    assert out_hi.dtype == torch.float32 and lse_hi.dtype == torch.float32
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(out_lo.float(), out_hi, atol=tol, rtol=tol)
    torch.testing.assert_close(lse_lo, lse_hi, atol=tol * 4, rtol=tol)
    # The low-precision computation really differs from the fp32 one (it is a yardstick, not a copy).
    assert not torch.equal(out_lo.float(), out_hi)
    # upcast=True on low-precision inputs equals the fp32 computation on the same values.
    out_f32 = attention_ref(q.float(), k.float(), v.float(), cu(lens), cu(lens), causal=True,
                            tree_dfs_order_start_q=start, tree_dfs_order_end_k=end)
    torch.testing.assert_close(out_hi, out_f32)


def test_float64_stays_float64():
    q, k, v = make_qkv(5, 5, 2, 2, 8, dtype=torch.float64)
    out, lse = attention_ref(q, k, v, cu([5]), cu([5]), causal=True, return_lse=True)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64


# ----------------------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------------------

def test_gradcheck_float64_tree_gqa():
    rng = np.random.default_rng(3)
    lq, lk = [4, 3], [4, 5]
    q, k, v = make_qkv(sum(lq), sum(lk), 2, 1, 4, dtype=torch.float64, seed=12)
    s0, e0, _ = random_tree_arrays(4, rng)
    start = torch.tensor(s0 + [2, 0, 4], dtype=torch.int32)
    end = torch.tensor(e0 + [1, 4, 4, 2, 4], dtype=torch.int32)
    cq, ck = cu(lq), cu(lk)

    def f(q_, k_, v_):
        o, l = attention_ref(q_, k_, v_, cq, ck, causal=True, tree_dfs_order_start_q=start,
                             tree_dfs_order_end_k=end, return_lse=True)
        return o, torch.where(torch.isfinite(l), l, torch.zeros_like(l))

    inputs = tuple(t.clone().requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_gradcheck_padded_noncausal():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 4, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 4, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: attention_ref(a, b, c), (q, k, v), eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# visible_mask / count_visible_pairs
# ----------------------------------------------------------------------------------------------------------

def test_visible_mask_tree_rule():
    start = torch.tensor([0, 1, 2, 3])
    end = torch.tensor([3, 2, 2, 3])  # token 0 root; 1 -> 2 chain; 3 child of 0
    m = visible_mask(4, 4, True, start, end)
    expected = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]]
    assert m.int().tolist() == expected
    assert torch.equal(visible_mask(4, 4, True, start, end, rows=(1, 3)), m[1:3])
    assert torch.equal(visible_mask(3, 6, True, rows=(2, 3)), visible_mask(3, 6, True)[2:])


@pytest.mark.parametrize("seed", range(6))
def test_count_visible_pairs_matches_masks(seed):
    rng = np.random.default_rng(seed)
    b = int(rng.integers(1, 6))
    lq = rng.integers(0, 40, b).tolist()
    same = seed % 2 == 0
    lk = lq if same else rng.integers(0, 40, b).tolist()
    cq, ck = cu(lq), cu(lk)
    if same:
        start, end = tree_for(lq, rng)
    else:  # arbitrary integer arrays: the count must still be exact
        start = torch.tensor(rng.integers(-3, 30, sum(lq)), dtype=torch.int32)
        end = torch.tensor(rng.integers(-3, 30, sum(lk)), dtype=torch.int32)
    for causal, tree in ((False, False), (True, False), (True, True)):
        expected = 0
        for i in range(b):
            sl_q = slice(int(cq[i]), int(cq[i + 1]))
            sl_k = slice(int(ck[i]), int(ck[i + 1]))
            m = visible_mask(lq[i], lk[i], causal, start[sl_q] if tree else None, end[sl_k] if tree else None)
            expected += int(m.sum())
        got = count_visible_pairs(cq, ck, causal, start if tree else None, end if tree else None)
        assert got == expected, (causal, tree)


def test_count_visible_pairs_is_fast_on_big_trees():
    rng = np.random.default_rng(0)
    n = 35_000
    start, end, parent = random_tree_arrays(n, rng)
    depth = np.zeros(n, dtype=np.int64)
    for t in range(n):
        depth[t] = 0 if parent[t] < 0 else depth[parent[t]] + 1
    c = cu([n])
    t0 = time.perf_counter()
    got = count_visible_pairs(c, c, True, torch.tensor(start, dtype=torch.int32), torch.tensor(end, dtype=torch.int32))
    elapsed = time.perf_counter() - t0
    assert got == int((depth + 1).sum())
    assert elapsed < 1.0, elapsed
    assert count_visible_pairs(c, c, True) == n * (n + 1) // 2
    assert count_visible_pairs(c, c, False) == n * n


# ----------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------

def test_errors():
    q, k, v = make_qkv(5, 5, 4, 2, 8)
    c = cu([5])
    s = torch.arange(5, dtype=torch.int32)
    with pytest.raises(ValueError, match="need cu_seqlens_q and cu_seqlens_k"):
        attention_ref(q, k, v)
    with pytest.raises(ValueError, match="causal=True"):
        attention_ref(q, k, v, c, c, tree_dfs_order_start_q=s, tree_dfs_order_end_k=s)
    with pytest.raises(ValueError, match="pass both"):
        attention_ref(q, k, v, c, c, causal=True, tree_dfs_order_start_q=s)
    with pytest.raises(ValueError, match="must have shape"):
        attention_ref(q, k, v, c, c, causal=True, tree_dfs_order_start_q=s[:4], tree_dfs_order_end_k=s)
    with pytest.raises(ValueError, match="must be a multiple"):
        attention_ref(q[:, :3], k, v, c, c)
    with pytest.raises(ValueError, match="same head dim"):
        attention_ref(q[..., :4], k, v, c, c)
    with pytest.raises(ValueError, match="3-D .* or 4-D"):
        attention_ref(q[0], k, v, c, c)
    with pytest.raises(ValueError, match="must have 3 dims"):
        attention_ref(q, k[None], v, c, c)
    with pytest.raises(ValueError, match="k and v must agree"):
        attention_ref(q, k, v[:4], c, c)
    with pytest.raises(ValueError, match="exceeds the number of tokens"):
        attention_ref(q, k, v, cu([6]), c)
    with pytest.raises(ValueError, match="non-decreasing"):
        attention_ref(q, k, v, torch.tensor([0, 3, 2], dtype=torch.int32), torch.tensor([0, 3, 5]))
    with pytest.raises(ValueError, match=r"\[0\] must be 0"):
        attention_ref(q, k, v, torch.tensor([1, 5], dtype=torch.int32), c)
    with pytest.raises(ValueError, match="same length"):
        attention_ref(q, k, v, c, torch.tensor([0, 2, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="hold integers"):
        attention_ref(q, k, v, c, c, causal=True, tree_dfs_order_start_q=s.float(), tree_dfs_order_end_k=s)
    with pytest.raises(ValueError, match="floating-point"):
        attention_ref(q.int(), k, v, c, c)
    with pytest.raises(ValueError, match="padded inputs"):
        attention_ref(q[None], k[None], v[None], c, c)
    with pytest.raises(ValueError, match="batch size"):
        attention_ref(q[None], torch.cat([k[None], k[None]]), torch.cat([v[None], v[None]]))
    with pytest.raises(ValueError, match="share a dtype"):
        attention_ref(q.half(), k, v, c, c, upcast=False)
    with pytest.raises(ValueError, match="causal=True"):
        visible_mask(3, 3, False, [0, 1, 2], [2, 2, 2])
    with pytest.raises(ValueError, match="start_q must have shape"):
        visible_mask(3, 3, True, [0, 1], [2, 2, 2])
    with pytest.raises(ValueError, match="causal=True"):
        count_visible_pairs(c, c, False, s, s)


def test_error_bound_is_twice_the_low_precision_error_plus_the_slack():
    assert set(reference.ERROR_ATOL) == {"out", "lse", "dq", "dk", "dv"}
    assert reference.error_bound("out", 0.0) == reference.ERROR_ATOL["out"]
    assert reference.error_bound("dq", 0.25) == pytest.approx(0.5 + reference.ERROR_ATOL["dq"])
    with pytest.raises(KeyError):
        reference.error_bound("o", 0.1)
