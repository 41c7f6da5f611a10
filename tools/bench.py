#!/usr/bin/env python3
"""Benchmark flash-tree-attn on the standard tree workloads against the usual baselines.

    python tools/bench.py                      # full run (~4 min on one H200)
    python tools/bench.py --quick              # ~90 s: fewer reps, D=128 dense rows only, no flex on the deep tree
    python tools/bench.py --workloads grpo_P4096_n8_R1024,dense --only ours,flex
    python tools/bench.py --paths sm80,sm90    # one "ours" row per kernel path (FLASH_TREE_ATTN_PATH)
    python tools/bench.py --dry-run            # CPU, tiny sizes, attention_ref stands in for ours: numbers meaningless

Per workload (tools/workloads.json) it times forward and forward+backward (triton.testing.do_bench, median,
fresh random bf16 inputs, a fixed random output gradient), reports useful TFLOP/s (visible pairs only:
fwd = 4 * pairs * D * Hq, fwd+bwd = 3.5 * fwd) and the peak extra memory of one fwd+bwd, for:
  ours                       flash_tree_attn.flash_attn_varlen_func with the tree arrays (per kernel path)
  flex_tree                  compiled FlexAttention with a BlockMask from the tree mask_mod (+ block_mask_ms)
  dup_prefix_sdpa_flash/cudnn  every root-to-leaf path as its own causal sequence (padded batch), SDPA
  packed_causal_sdpa_flash/cudnn  plain causal over the packed sequence (WRONG result: masking without skipping)
and dense causal rows (B * L = 65536 tokens, H * D = 2048): ours (causal varlen, equal lengths) vs SDPA
flash / cuDNN. Before timing ours it checks the output against flash_tree_attn.reference.attention_ref (fp32)
on two heads (on the first tokens when the full size is too large) and marks the row FAIL above 1e-2.
It measures the share of the forward spent in the "block_bounds" prep kernel with torch.profiler.
Anchors measured on the H200 (tools/anchors-h200-2026-11-29.json) are printed beside the fresh numbers.
Order: ours on every workload first, then the baselines; with --budget-s (or env BENCH_BUDGET_S) rows not
started in time are skipped. Every failure (a baseline's "No available kernel", an OOM) becomes a row in the
table instead of stopping the run. Writes JSON (--out-json; rewritten after every workload, so a run cut short
keeps what it measured), a PNG chart (--out-png; skipped without matplotlib) and the table (--out-table), and
prints the table last. Exit status 1 when an "ours" row fails its check, errors or is skipped, else 0.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

_T_PROCESS = time.perf_counter()  # the --budget-s clock starts with the process
_TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TOOLS))
import bench_lib as bl  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO = bl.REPO_ROOT
REL_ERR_LIMIT = 1e-2
DRY_SCALE = 1.0 / 64
DRY_HEADS = (4, 2)  # (Hq, Hkv) in --dry-run: GQA still exercised

TREE_METHODS = ["ours", "flex", "dup_flash", "dup_cudnn", "packed_flash", "packed_cudnn"]
DENSE_METHODS = ["dense_ours", "dense_flash", "dense_cudnn"]
ONLY_ALIASES = {
    "ours": ["ours", "dense_ours"],
    "flex": ["flex"], "flex_tree": ["flex"],
    "dup": ["dup_flash", "dup_cudnn"], "dup_prefix": ["dup_flash", "dup_cudnn"],
    "packed": ["packed_flash", "packed_cudnn"],
    "dense": list(DENSE_METHODS),
    "sdpa": ["dup_flash", "dup_cudnn", "packed_flash", "packed_cudnn", "dense_flash", "dense_cudnn"],
    "flash": ["dup_flash", "packed_flash", "dense_flash"],
    "cudnn": ["dup_cudnn", "packed_cudnn", "dense_cudnn"],
}
# canonical (JSON / anchor) method names, and short labels for the table
CANON = {
    "flex": "flex_tree", "dup_flash": "dup_prefix_sdpa_flash", "dup_cudnn": "dup_prefix_sdpa_cudnn",
    "packed_flash": "packed_causal_sdpa_flash", "packed_cudnn": "packed_causal_sdpa_cudnn",
    "dense_flash": "dense_causal_sdpa_flash", "dense_cudnn": "dense_causal_sdpa_cudnn",
}
SHORT = {
    "flex_tree": "flex", "dup_prefix_sdpa_flash": "dup_flash", "dup_prefix_sdpa_cudnn": "dup_cudnn",
    "packed_causal_sdpa_flash": "packed_flash", "packed_causal_sdpa_cudnn": "packed_cudnn",
    "dense_causal_sdpa_flash": "sdpa_flash", "dense_causal_sdpa_cudnn": "sdpa_cudnn",
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def _short_err(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip().replace("\n", " ")
    return text


# ------------------------------------------------------------------------------------------- environment

def import_package():
    """Import flash_tree_attn: the checkout's copy when it holds a built extension, else the installed one,
    else the checkout's (pure Python)."""
    has_local_so = any((REPO / "flash_tree_attn").glob("_C*.so"))
    if has_local_so and str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        import flash_tree_attn  # noqa: F401
    except ImportError:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        import flash_tree_attn  # noqa: F401
    import flash_tree_attn as fta
    return fta


def git_info() -> dict:
    def run(*cmd):
        try:
            r = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=20)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    commit = run("rev-parse", "HEAD")
    dirty = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": (bool(dirty) if dirty is not None else None)}


# ------------------------------------------------------------------------------------------------ timing

class Timer:
    def __init__(self, dry: bool, warmup: int, rep: int):
        self.dry, self.warmup, self.rep = dry, warmup, rep
        self.cuda = torch.cuda.is_available() and not dry

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def bench_ms(self, fn) -> float:
        if self.cuda:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=self.warmup, rep=self.rep, return_mode="median"))
        # CPU (--dry-run): measure() already made the first call; one timed call exercises the path
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def peak_extra_mib(self, fn) -> float | None:
        """torch.cuda.max_memory_allocated delta over what is allocated before (the inputs) for one call."""
        if not self.cuda:
            fn()
            return None
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        res = fn()
        del res
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    def kernel_ms(self, fn, iters: int = 5) -> dict:
        """{kernel name: device ms per call} from torch.profiler ({} without CUDA)."""
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        fn()
        self.sync()
        try:
            prof_cm = profile(activities=acts, acc_events=True)
        except TypeError:  # older torch
            prof_cm = profile(activities=acts)
        with prof_cm as prof:
            for _ in range(iters):
                fn()
            self.sync()
        out: dict[str, float] = {}
        for e in prof.events():
            if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False):
                out[e.name] = out.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e3 / iters
        return out


def measure(timer: Timer, fwd, fwdbwd, fwd_flops: float) -> dict:
    """fwd, fwd+bwd medians, useful TFLOP/s and peak extra memory of one fwd+bwd (of one fwd when fwdbwd is
    None); the first calls surface errors early."""
    t0 = time.perf_counter()
    fwd()
    timer.sync()
    first_s = time.perf_counter() - t0
    r = {"first_fwd_s": round(first_s, 4)}
    if fwdbwd is not None:
        t0 = time.perf_counter()
        fwdbwd()
        timer.sync()
        r["first_fwdbwd_s"] = round(time.perf_counter() - t0, 4)
    r["fwd_ms"] = timer.bench_ms(fwd)
    r["fwd_tflops"] = bl.tflops(fwd_flops, r["fwd_ms"])
    if fwdbwd is not None:
        r["fwdbwd_ms"] = timer.bench_ms(fwdbwd)
        r["fwdbwd_tflops"] = bl.tflops(3.5 * fwd_flops, r["fwdbwd_ms"])
        r["peak_extra_mib"] = timer.peak_extra_mib(fwdbwd)
    else:
        r["peak_extra_mib"] = timer.peak_extra_mib(fwd)
    return r


def make_fwdbwd(fwd, inputs):
    """fwd+bwd closure: out = fwd(); autograd.grad(out, inputs, g) with one fixed random g (no .grad build-up)."""
    holder = {}

    def run():
        out = fwd()
        g = holder.get("g")
        if g is None or g.shape != out.shape:
            g = holder["g"] = torch.randn_like(out)
        return torch.autograd.grad(out, inputs, g)

    return run


def rnd(shape, dtype, device, requires_grad=True):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)


# ----------------------------------------------------------------------------------------- the reference

def call_attention_ref(q, k, v, cu_q, cu_k, causal, start_q=None, end_k=None):
    """flash_tree_attn.reference.attention_ref in fp32 (upcast=True); returns out."""
    from flash_tree_attn import reference

    return reference.attention_ref(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal,
                                   tree_dfs_order_start_q=start_q, tree_dfs_order_end_k=end_k, upcast=True)


def rel_err(out, ref) -> float:
    out, ref = out.detach().float(), ref.detach().float()
    if out.shape != ref.shape:
        raise ValueError(f"shape mismatch: out {tuple(out.shape)} vs reference {tuple(ref.shape)}")
    den = ref.norm().item()
    num = (out - ref).norm().item()
    if not math.isfinite(num) or not math.isfinite(den):
        return float("nan")
    return num / max(den, 1e-30)


def head_subset(hq: int, hkv: int) -> tuple[list[int], list[int]]:
    """Two query heads (first, last) and the kv heads they read: GQA group mapping h -> h // (hq / hkv)."""
    if hq == 1:
        return [0], [0]
    g = hq // hkv
    qh = [0, hq - 1]
    return qh, [h // g for h in qh]


def ref_fits(n_q: int, n_k: int, heads: int, device) -> bool:
    """Rough check that attention_ref fits in memory: it builds a few (n_q, n_k) bool masks and works on query-row
    chunks of at most 2**26 fp32 scores (a few GiB in all for the 36k-token tree)."""
    need = 4 * n_q * n_k + 8 * 4 * 2**26 + 4 * 4 * heads * (n_q + n_k) * 256
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return need < 0.6 * free
    return need < 8 * 2**30


# ------------------------------------------------------------------------------------------------ the run

class Bench:
    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.device = torch.device("cpu" if self.dry or not torch.cuda.is_available() else "cuda")
        if not self.dry and self.device.type != "cuda":
            raise SystemExit("bench: no CUDA GPU here; use --dry-run for the CPU code-path check")
        self.dtype = torch.bfloat16
        if self.dry:
            self.dtype = torch.float32  # CPU bf16 matmuls are slow; the dry run only exercises code paths
            torch.set_num_threads(1)  # tiny CPU problems: threads only add jitter on a shared machine
        self.timer = Timer(self.dry, args.warmup, args.rep)
        self.rows: list[dict] = []
        self.anchors = bl.load_anchors()
        self.fta = import_package()
        self.flex_fn = None
        self.workload_info: dict = {}
        self._ctx: dict = {}
        self.deadline = None

    # ----- helpers
    def row(self, section, workload, method, **kw) -> dict:
        r = {"section": section, "workload": workload, "method": method, "status": "ok"}
        r.update(kw)
        a = self.anchors.get((method, workload))
        if a:
            r["anchor_fwd_ms"] = a.get("fwd_ms")
            r["anchor_fwdbwd_ms"] = a.get("fwdbwd_ms")
        self.rows.append(r)
        return r

    def guarded(self, r: dict, fn) -> None:
        """r.update(fn()); any exception goes into the row; a rel_err above the limit (or NaN) makes it FAIL."""
        t0 = time.perf_counter()
        try:
            r.update(fn())
        except Exception as e:  # noqa: BLE001 - every failure goes into the table
            r["status"] = "error"
            r["error"] = _short_err(e)
            r["traceback"] = traceback.format_exc(limit=8)
            log(f"    ERROR {r['method']}: {r['error'][:300]}")
        finally:
            if self.device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
            r["wall_s"] = round(time.perf_counter() - t0, 2)
        if "rel_err" in r and not (r["rel_err"] is not None and r["rel_err"] <= REL_ERR_LIMIT):  # NaN fails
            r["status"] = "FAIL"
            log(f"    FAIL {r['method']}: rel err {r['rel_err']} > {REL_ERR_LIMIT} ({r.get('check_on')})")

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def add(self, section: str, workload: str, method: str, fn, path: str | None = None, **kw) -> dict:
        """One row: skipped once the time budget is spent, else fn() under guarded(), with
        FLASH_TREE_ATTN_PATH set to path for our rows."""
        r = self.row(section, workload, method, **kw)
        if self.out_of_time():
            r["status"] = "skipped"
            r["error"] = f"skipped: time budget ({self.args.budget_s} s) spent"
            return r
        log(f"  {workload}: {method}")
        old = os.environ.get("FLASH_TREE_ATTN_PATH")
        if path is not None:
            os.environ["FLASH_TREE_ATTN_PATH"] = path
        try:
            self.guarded(r, fn)
        finally:
            if path is not None:
                if old is None:
                    os.environ.pop("FLASH_TREE_ATTN_PATH", None)
                else:
                    os.environ["FLASH_TREE_ATTN_PATH"] = old
        return r

    def ours_call(self):
        """The attention under test: the library, or (--dry-run) attention_ref."""
        if self.dry:
            def attn(q, k, v, cu_q, cu_k, max_q, max_k, causal, start_q=None, end_k=None):
                return call_attention_ref(q, k, v, cu_q, cu_k, causal, start_q, end_k)
            return attn

        f = self.fta.flash_attn_varlen_func

        def attn(q, k, v, cu_q, cu_k, max_q, max_k, causal, start_q=None, end_k=None):
            return f(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal, tree_dfs_order_start_q=start_q,
                     tree_dfs_order_end_k=end_k)
        return attn

    def flex(self):
        from torch.nn.attention.flex_attention import flex_attention

        if self.flex_fn is None:
            if self.dry:
                self.flex_fn = flex_attention
            else:
                import torch._dynamo

                for name in ("recompile_limit", "cache_size_limit"):
                    if hasattr(torch._dynamo.config, name):
                        setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
                        break
                self.flex_fn = torch.compile(flex_attention, dynamic=False)
        return self.flex_fn

    def enabled(self, method: str) -> bool:
        return method in self.args.only_set

    # ----- workload contexts (built once and cached; a failure is recorded once)
    def tree_ctx(self, name: str) -> dict | None:
        if name in self._ctx:
            return self._ctx[name]
        try:
            c = self._build_tree_ctx(name)
        except Exception as e:  # noqa: BLE001 - a broken workload must not stop the others
            log(f"  ERROR building {name}: {_short_err(e)}")
            self.row("tree", name, "workload", status="error", error=_short_err(e),
                     traceback=traceback.format_exc(limit=8))
            c = None
        self._ctx[name] = c
        return c

    def _build_tree_ctx(self, name: str) -> dict:
        from flash_tree_attn import reference
        from flash_tree_attn import tree as fta_tree

        segs = bl.build_workload(name)
        hq, hkv, d = bl.workload_heads(name)
        if self.dry:
            segs = bl.scale_segments(segs, DRY_SCALE)
            hq, hkv = DRY_HEADS
        st = bl.tree_stats(segs)
        n, pairs = st["N"], st["pairs"]
        log(f"== {name}: N={n} pairs={pairs} ({100 * st['density_vs_causal']:.1f}% of causal) "
            f"paths={st['paths']} Hq={hq} Hkv={hkv} D={d}")
        self.workload_info[name] = {
            "N": n, "pairs": pairs, "density_vs_causal": st["density_vs_causal"], "paths": st["paths"],
            "path_tokens": st["path_tokens"], "longest_path": st["longest_path"], "Hq": hq, "Hkv": hkv, "D": d}
        lay = fta_tree.layout_from_segments([segs], device=None)
        if lay.start_q.numel() != n or int(lay.max_seqlen) != n or lay.cu_seqlens.tolist() != [0, n]:
            raise RuntimeError(f"layout_from_segments disagrees with the workload: {lay.start_q.numel()} tokens, "
                               f"max_seqlen {lay.max_seqlen}, cu_seqlens {lay.cu_seqlens.tolist()} (expected N={n})")
        got = int(reference.count_visible_pairs(lay.cu_seqlens, lay.cu_seqlens, True, lay.start_q, lay.end_k))
        if got != pairs:
            raise RuntimeError(f"reference.count_visible_pairs={got} but the workload has {pairs} pairs")
        return {"name": name, "segs": segs, "n": n, "pairs": pairs, "flops": bl.fwd_flops(pairs, d, hq),
                "hq": hq, "hkv": hkv, "d": d,
                "start_q": lay.start_q.to(self.device, torch.int32).contiguous(),
                "end_k": lay.end_k.to(self.device, torch.int32).contiguous(),
                "cu": lay.cu_seqlens.to(self.device, torch.int32).contiguous()}

    def dense_ctx(self, cfg) -> dict:
        L, B, H, D = cfg
        name = bl.dense_name(L, B, H, D)
        if self.dry:
            L, H = max(16, int(L * DRY_SCALE)), 2
        if name not in self.workload_info:
            log(f"== {name}" + (f" (dry-run: L={L} H={H})" if self.dry else ""))
        pairs = bl.dense_pairs(L, B)
        self.workload_info[name] = {"L": L, "B": B, "H": H, "D": D, "pairs": pairs}
        return {"name": name, "L": L, "B": B, "H": H, "D": D, "flops": bl.fwd_flops(pairs, D, H)}

    # ----- correctness
    def guard(self, attn, q, k, v, cu, n, start_q, end_k) -> dict:
        """Rel. error of ours vs attention_ref (fp32) on two heads: the full problem when it fits, else the first
        tokens (a DFS prefix of a tree is a tree: clip end_k)."""
        qh, kh = head_subset(q.shape[1], k.shape[1])

        def check(qq, kk, vv, cu_, n_, sq, ek):
            with torch.no_grad():
                out = attn(qq, kk, vv, cu_, cu_, n_, n_, True, sq, ek)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                ref = call_attention_ref(qq[:, qh].float(), kk[:, kh].float(), vv[:, kh].float(), cu_, cu_, True,
                                         sq, ek)
                finite = bool(torch.isfinite(out).all().item())
                e = rel_err(out[:, qh], ref)
            return e if finite else float("nan")

        if ref_fits(n, n, len(qh), q.device) and cu.numel() == 2:
            try:
                return {"rel_err": check(q, k, v, cu, n, start_q, end_k), "check_on": f"full, heads {qh}"}
            except torch.OutOfMemoryError:
                gc.collect()
                torch.cuda.empty_cache()
        t = min(self.args.check_tokens, n)
        cu_t = torch.tensor([0, t], dtype=torch.int32, device=q.device)
        sq = ek = None
        if start_q is not None:
            sq = start_q[:t].contiguous()
            ek = end_k[:t].clamp(max=t - 1).contiguous()
        e = check(q[:t].contiguous(), k[:t].contiguous(), v[:t].contiguous(), cu_t, t, sq, ek)
        return {"rel_err": e, "check_on": f"first {t} tokens, heads {qh}"}

    def bookkeeping(self, fwd, fwdbwd, res: dict) -> dict:
        """Time of the "block_bounds" prep kernel(s) (torch.profiler) per forward, as % of the forward median;
        the same for one forward+backward (JSON only), with the heaviest kernels of each."""
        out = {"block_bounds_ms": None, "block_bounds_pct": None}
        for tag, fn, ms in (("fwd", fwd, res.get("fwd_ms")), ("fwdbwd", fwdbwd, res.get("fwdbwd_ms"))):
            try:
                km = self.timer.kernel_ms(fn, iters=5 if tag == "fwd" else 3)
            except Exception as e:  # noqa: BLE001
                out[f"bookkeeping_{tag}_error"] = _short_err(e)
                continue
            top = sorted(km.items(), key=lambda x: -x[1])[:8]
            out[f"kernels_{tag}_ms"] = {k_: round(t, 5) for k_, t in top}
            out[f"kernel_total_{tag}_ms"] = sum(km.values())
            if not km:
                continue
            bb = sum(t for name, t in km.items() if "block_bounds" in name)
            sfx = "" if tag == "fwd" else "_fwdbwd"
            out[f"block_bounds{sfx}_ms"] = bb
            out[f"block_bounds{sfx}_pct"] = 100.0 * bb / ms if ms else None
            if bb == 0.0 and tag == "fwd":
                out["bookkeeping_note"] = "no CUDA kernel named *block_bounds* in the forward"
        return out

    # ----- ours
    def tree_ours(self, c: dict, path: str) -> None:
        method = "ours" if path == "auto" else f"ours_{path}"
        kw = {"note": "DRY-RUN: attention_ref stands in"} if self.dry else {}
        self.add("tree", c["name"], method, lambda: self._tree_ours(c), path=path, kernel_path=path, **kw)

    def _tree_ours(self, c: dict) -> dict:
        attn = self.ours_call()
        n, dev, dt = c["n"], self.device, self.dtype
        q = rnd((n, c["hq"], c["d"]), dt, dev)
        k = rnd((n, c["hkv"], c["d"]), dt, dev)
        v = rnd((n, c["hkv"], c["d"]), dt, dev)
        cu, sq, ek = c["cu"], c["start_q"], c["end_k"]
        check = self.guard(attn, q, k, v, cu, n, sq, ek)  # before timing

        def fwd():
            return attn(q, k, v, cu, cu, n, n, True, sq, ek)

        fwdbwd = make_fwdbwd(fwd, (q, k, v))
        res = measure(self.timer, fwd, fwdbwd, c["flops"])
        res.update(self.bookkeeping(fwd, fwdbwd, res))
        res.update(check)
        return res

    def dense_ours(self, c: dict, path: str) -> None:
        method = "ours" if path == "auto" else f"ours_{path}"
        kw = {"note": "DRY-RUN: attention_ref stands in"} if self.dry else {}
        self.add("dense", c["name"], method, lambda: self._dense_ours(c), path=path, kernel_path=path, **kw)

    def _dense_ours(self, c: dict) -> dict:
        L, B, H, D = c["L"], c["B"], c["H"], c["D"]
        attn = self.ours_call()
        dev, dt = self.device, self.dtype
        q = rnd((B * L, H, D), dt, dev)
        k = rnd((B * L, H, D), dt, dev)
        v = rnd((B * L, H, D), dt, dev)
        cu = torch.arange(0, (B + 1) * L, L, dtype=torch.int32, device=dev)
        # ours runs on the whole batch; the reference checks sequence 0 on two heads
        qh, kh = head_subset(H, H)
        with torch.no_grad():
            out = attn(q, k, v, cu, cu, L, L, True)
            cu1 = cu[:2].contiguous()
            ref = call_attention_ref(q[:L, qh].float(), k[:L, kh].float(), v[:L, kh].float(), cu1, cu1, True)
            finite = bool(torch.isfinite(out).all().item())
            e = rel_err(out[:L, qh], ref)
            del out, ref
        check = {"rel_err": e if finite else float("nan"), "check_on": f"sequence 0, heads {qh}"}

        def fwd():
            return attn(q, k, v, cu, cu, L, L, True)

        fwdbwd = make_fwdbwd(fwd, (q, k, v))
        res = measure(self.timer, fwd, fwdbwd, c["flops"])
        res.update(self.bookkeeping(fwd, fwdbwd, res))
        res.update(check)
        return res

    # ----- FlexAttention
    def tree_flex(self, c: dict) -> None:
        if self.args.flex_max_tokens and c["n"] > self.args.flex_max_tokens:
            self.row("tree", c["name"], "flex_tree", status="skipped",
                     error=f"skipped: N > --flex-max-tokens {self.args.flex_max_tokens}")
            return
        self.add("tree", c["name"], "flex_tree", lambda: self._tree_flex(c))

    def _tree_flex(self, c: dict) -> dict:
        from torch.nn.attention.flex_attention import create_block_mask

        n, dev, dt = c["n"], self.device, self.dtype
        sq, ek = c["start_q"], c["end_k"]

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (sq[q_idx] <= ek[kv_idx])

        t0 = time.perf_counter()
        bm = create_block_mask(mask_mod, None, None, n, n, device=dev)
        self.timer.sync()
        first_s = time.perf_counter() - t0
        times = []
        for _ in range(3 if self.dry else 5):
            t0 = time.perf_counter()
            bm = create_block_mask(mask_mod, None, None, n, n, device=dev)
            self.timer.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        extra = {"block_mask_ms": statistics.median(times), "block_mask_first_s": round(first_s, 4)}
        flex = self.flex()
        q = rnd((1, c["hq"], n, c["d"]), dt, dev, requires_grad=not self.dry)
        k = rnd((1, c["hkv"], n, c["d"]), dt, dev, requires_grad=not self.dry)
        v = rnd((1, c["hkv"], n, c["d"]), dt, dev, requires_grad=not self.dry)
        gqa = c["hq"] != c["hkv"]
        if self.dry:  # FlexAttention has no CPU backward: time the forward only
            extra["note"] = "DRY-RUN: eager, forward only (no CPU backward)"

        def fwd():
            return flex(q, k, v, block_mask=bm, enable_gqa=gqa)

        t0 = time.perf_counter()
        out = fwd()  # compiles; grad mode as timed (no_grad would compile another graph)
        self.timer.sync()
        extra["compile_fwd_s"] = round(time.perf_counter() - t0, 2)
        qh, kh = head_subset(c["hq"], c["hkv"])
        if ref_fits(n, n, len(qh), q.device):
            with torch.no_grad():
                tok = lambda t, hs: t[0, hs].transpose(0, 1).float()  # noqa: E731 - (1, H, N, D) -> (N, h, D)
                ref = call_attention_ref(tok(q, qh), tok(k, kh), tok(v, kh), c["cu"], c["cu"], True, sq, ek)
                extra["rel_err"] = rel_err(out[0, qh].transpose(0, 1), ref)
                extra["check_on"] = f"full, heads {qh}"
                del ref
        del out
        res = measure(self.timer, fwd, None if self.dry else make_fwdbwd(fwd, (q, k, v)), c["flops"])
        res.update(extra)
        return res

    # ----- SDPA
    def sdpa(self, q, k, v, backend: str, gqa: bool):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        be = SDPBackend.FLASH_ATTENTION if backend == "flash" else SDPBackend.CUDNN_ATTENTION

        def fwd():
            with sdpa_kernel([be]):
                if gqa:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return fwd

    def sdpa_measure(self, shape_q, shape_kv, backend: str, flops: float) -> dict:
        """SDPA causal on (B, H, L, D) inputs; GQA through enable_gqa, or kv heads expanded when the backend
        refuses it (recorded as kv_expanded)."""
        dev, dt = self.device, self.dtype
        q = rnd(shape_q, dt, dev)
        k = rnd(shape_kv, dt, dev)
        v = rnd(shape_kv, dt, dev)
        gqa = shape_q[1] != shape_kv[1]
        extra = {}
        fwd = self.sdpa(q, k, v, backend, gqa)
        if gqa:
            try:
                make_fwdbwd(fwd, (q, k, v))()
                self.timer.sync()
            except RuntimeError as e:
                g = shape_q[1] // shape_kv[1]
                extra = {"kv_expanded": True, "gqa_error": _short_err(e)[:300], "note": f"kv heads x{g}"}
                del k, v
                shape_x = (shape_kv[0], shape_q[1]) + tuple(shape_kv[2:])
                k = rnd(shape_x, dt, dev)
                v = rnd(shape_x, dt, dev)
                fwd = self.sdpa(q, k, v, backend, False)
        res = measure(self.timer, fwd, make_fwdbwd(fwd, (q, k, v)), flops)
        res.update(extra)
        return res

    def tree_dup(self, c: dict, method: str, backend: str) -> None:
        plens = bl.path_lengths(c["segs"])
        shape_q = (len(plens), c["hq"], max(plens), c["d"])
        shape_kv = (len(plens), c["hkv"], max(plens), c["d"])
        self.add("tree", c["name"], method, lambda: self.sdpa_measure(shape_q, shape_kv, backend, c["flops"]),
                 paths=len(plens), path_tokens=sum(plens), padded_len=max(plens))

    def tree_packed(self, c: dict, method: str, backend: str) -> None:
        n = c["n"]

        def go():
            res = self.sdpa_measure((1, c["hq"], n, c["d"]), (1, c["hkv"], n, c["d"]), backend, c["flops"])
            res["causal_fwd_tflops"] = bl.tflops(bl.fwd_flops(n * (n + 1) // 2, c["d"], c["hq"]), res["fwd_ms"])
            return res
        self.add("tree", c["name"], method, go, note="tree ignored (wrong result)")

    def dense_sdpa(self, c: dict, method: str, backend: str) -> None:
        shape = (c["B"], c["H"], c["L"], c["D"])
        self.add("dense", c["name"], method, lambda: self.sdpa_measure(shape, shape, backend, c["flops"]))

    # ----- driver
    def run(self, progress=None) -> None:
        """Pass 1: ours on every workload (the numbers that matter most, first); pass 2: the baselines.
        progress() is called after each workload (incremental reports)."""
        if self.args.budget_s:
            self.deadline = _T_PROCESS + self.args.budget_s
        progress = progress or (lambda: None)
        for path in self.args.path_list:
            if not self.enabled("ours") and not self.enabled("dense_ours"):
                break
            for name in self.args.tree_workloads:
                c = self.tree_ctx(name)
                if c is not None and self.enabled("ours"):
                    self.tree_ours(c, path)
                    progress()
            for cfg in self.args.dense_list:
                if self.enabled("dense_ours"):
                    self.dense_ours(self.dense_ctx(cfg), path)
                    progress()
        for name in self.args.tree_workloads:
            c = self.tree_ctx(name)
            if c is None:
                continue
            if self.enabled("flex"):
                self.tree_flex(c)
            for m, backend in (("dup_flash", "flash"), ("dup_cudnn", "cudnn")):
                if self.enabled(m):
                    self.tree_dup(c, CANON[m], backend)
            for m, backend in (("packed_flash", "flash"), ("packed_cudnn", "cudnn")):
                if self.enabled(m):
                    self.tree_packed(c, CANON[m], backend)
            progress()
        for cfg in self.args.dense_list:
            c = self.dense_ctx(cfg)
            for m, backend in (("dense_flash", "flash"), ("dense_cudnn", "cudnn")):
                if self.enabled(m):
                    self.dense_sdpa(c, CANON[m], backend)
            progress()
        self._ctx.clear()

    def sorted_rows(self) -> list[dict]:
        """Rows grouped by workload (trees, then dense rows, in the order asked), methods in a fixed order."""
        wl = list(self.args.tree_workloads) + [bl.dense_name(*c) for c in self.args.dense_list]
        order = ["workload", "ours", "ours_auto", "ours_sm80", "ours_sm90", "flex_tree", "dup_prefix_sdpa_flash",
                 "dup_prefix_sdpa_cudnn", "packed_causal_sdpa_flash", "packed_causal_sdpa_cudnn",
                 "dense_causal_sdpa_flash", "dense_causal_sdpa_cudnn"]

        def key(r):
            w = wl.index(r["workload"]) if r["workload"] in wl else len(wl)
            m = order.index(r["method"]) if r["method"] in order else len(order)
            return (w, m)
        return sorted(self.rows, key=key)


# --------------------------------------------------------------------------------------- ratios and report

def _find(rows, workload, method):
    for r in rows:
        if r["workload"] == workload and r["method"] == method and r.get("status") in ("ok", "FAIL"):
            return r
    return None


def compute_ratios(rows, anchors) -> list[dict]:
    """Speedups other_ms / ours_ms (> 1: ours faster), falling back to the anchor when the other row is missing,
    and ours' tree TFLOP/s over ours' dense causal D=128 TFLOP/s."""
    out = []
    ours_methods = sorted({r["method"] for r in rows if r["method"].startswith("ours")})
    tree_names = []
    for r in rows:
        if r["section"] == "tree" and r["workload"] not in tree_names:
            tree_names.append(r["workload"])
    for om in ours_methods:
        dense = None
        for cfg in ((16384, 4, 16, 128), (4096, 16, 16, 128)):
            dense = _find(rows, bl.dense_name(*cfg), om)
            if dense and dense.get("fwd_tflops"):
                break
            dense = None
        for w in tree_names:
            o = _find(rows, w, om)
            if not o or not o.get("fwd_ms"):
                continue
            rec = {"workload": w, "ours": om}
            for key, other in (("flex", "flex_tree"), ("dup_cudnn", "dup_prefix_sdpa_cudnn"),
                               ("dup_flash", "dup_prefix_sdpa_flash"), ("packed_flash", "packed_causal_sdpa_flash")):
                x = _find(rows, w, other)
                src = "fresh"
                if not x or not x.get("fwd_ms"):
                    x, src = anchors.get((other, w)), "anchor"
                if not x or not x.get("fwd_ms"):
                    continue
                rec[f"vs_{key}_fwd"] = x["fwd_ms"] / o["fwd_ms"]
                if x.get("fwdbwd_ms") and o.get("fwdbwd_ms"):
                    rec[f"vs_{key}_fwdbwd"] = x["fwdbwd_ms"] / o["fwdbwd_ms"]
                rec[f"vs_{key}_src"] = src
            if dense:
                rec["tflops_vs_dense_fwd"] = o["fwd_tflops"] / dense["fwd_tflops"]
                if o.get("fwdbwd_tflops") and dense.get("fwdbwd_tflops"):
                    rec["tflops_vs_dense_fwdbwd"] = o["fwdbwd_tflops"] / dense["fwdbwd_tflops"]
                rec["dense_row"] = dense["workload"]
            out.append(rec)
    return out


def anchor_drift(rows) -> dict | None:
    """Median fresh/anchor time over the baseline rows: > 1 means this GPU run is slower than the anchors."""
    vals = []
    for r in rows:
        if r["method"].startswith("ours") or r.get("status") != "ok":
            continue
        for k in ("fwd_ms", "fwdbwd_ms"):
            a = r.get(f"anchor_{k}")
            if a and r.get(k):
                vals.append(r[k] / a)
    if not vals:
        return None
    return {"median_fresh_over_anchor": statistics.median(vals), "n": len(vals), "min": min(vals), "max": max(vals)}


def _f(x, fmt="{:.3f}", none="-"):
    if x is None:
        return none
    if isinstance(x, float) and x != x:
        return "nan"
    return fmt.format(x)


def _ms_cell(ms, anchor):
    s = _f(ms, "{:.3f}")
    if anchor:
        s += f" [{anchor:.3f}]"
    return s


def format_table(meta, rows, ratios, info, drift) -> str:
    L = []
    L.append("=" * 118)
    head = f"flash-tree-attn bench  {meta['date']}  {meta['gpu']}  torch {meta['torch']}  commit {meta['commit_short']}"
    # The extension may be a prebuilt one (a copied .so, a wheel): name the tree it was built from too.
    built_from = (meta.get("build_info") or {}).get("git_commit")
    if built_from:
        head += f"  extension built from {str(built_from)[:10]}"
    if meta["dry_run"]:
        head = "DRY-RUN (CPU, tiny sizes, attention_ref stands in for ours: NUMBERS MEANINGLESS)  " + head
    L.append(head)
    hdr = f"{'method':<13} {'fwd ms [anchor]':<18} {'f+b ms [anchor]':<20} {'fwdTF':>6} {'f+bTF':>6} {'mem':>7} " \
          f"{'err':>7}  {'status':<6} note"
    L.append("ms: median (do_bench); [anchor H200 2026-11-29]; TF = useful TFLOP/s (visible pairs); mem = peak extra "
             "MiB of one fwd+bwd; err = rel. err vs fp32 ref")
    L.append(hdr)
    cur = None
    for r in rows:
        if r["workload"] != cur:
            cur = r["workload"]
            i = info.get(cur, {})
            if "N" in i:
                L.append(f"-- {cur}: N={i['N']} pairs={i['pairs']} ({100 * i['density_vs_causal']:.1f}% causal) "
                         f"paths={i['paths']} Hq={i['Hq']} Hkv={i['Hkv']} D={i['D']}")
            elif "L" in i:
                L.append(f"-- {cur}: dense causal B={i['B']} L={i['L']} H={i['H']} D={i['D']}")
            else:
                L.append(f"-- {cur}")
        notes = []
        if r.get("status") in ("error", "skipped"):
            notes.append((r.get("error") or "")[:100])
        else:
            if r.get("block_bounds_pct") is not None:
                notes.append(f"block_bounds {r['block_bounds_pct']:.2f}% ({r['block_bounds_ms'] * 1e3:.1f} us)")
            elif r.get("bookkeeping_fwd_error"):
                notes.append("profiler: " + r["bookkeeping_fwd_error"][:60])
            if r.get("block_mask_ms") is not None:
                notes.append(f"mask {r['block_mask_ms']:.2f} ms, compile {r.get('compile_fwd_s', 0):.0f}+"
                             f"{r.get('first_fwdbwd_s') or 0:.0f} s")
            if r.get("check_on", "").startswith("first"):
                notes.append(f"checked on {r['check_on']}")
            if r.get("note"):
                notes.append(r["note"])
        L.append(f"{SHORT.get(r['method'], r['method']):<13} "
                 f"{_ms_cell(r.get('fwd_ms'), r.get('anchor_fwd_ms')):<18} "
                 f"{_ms_cell(r.get('fwdbwd_ms'), r.get('anchor_fwdbwd_ms')):<20} "
                 f"{_f(r.get('fwd_tflops'), '{:.1f}'):>6} {_f(r.get('fwdbwd_tflops'), '{:.1f}'):>6} "
                 f"{_f(r.get('peak_extra_mib'), '{:.0f}'):>7} {_f(r.get('rel_err'), '{:.1e}'):>7}  "
                 f"{r.get('status', ''):<6} {'; '.join(n for n in notes if n)}")
    if ratios:
        L.append("-- ratios: other ms / ours ms (>1 = ours faster), fwd / fwd+bwd; '*' = vs anchor (no fresh row); "
                 "TF/dense = ours tree TF / ours dense causal D=128 TF")
        for x in ratios:
            cells = []
            for key in ("flex", "dup_cudnn", "dup_flash", "packed_flash"):
                if f"vs_{key}_fwd" in x:
                    star = "*" if x[f"vs_{key}_src"] == "anchor" else ""
                    cells.append(f"vs {key}{star} {x[f'vs_{key}_fwd']:.2f}/{_f(x.get(f'vs_{key}_fwdbwd'), '{:.2f}')}")
            if "tflops_vs_dense_fwd" in x:
                cells.append(f"TF/dense {x['tflops_vs_dense_fwd']:.2f}/{_f(x.get('tflops_vs_dense_fwdbwd'), '{:.2f}')}")
            lab = x["workload"] if x["ours"] == "ours" else f"{x['workload']} ({x['ours']})"
            L.append(f"{lab:<28} " + "  ".join(cells))
    if drift:
        L.append(f"-- baselines vs anchors: median fresh/anchor time {drift['median_fresh_over_anchor']:.3f} "
                 f"(n={drift['n']}, {drift['min']:.2f}..{drift['max']:.2f}); >1 = this run slower than the anchors")
    bad = [f"{r['workload']}/{r['method']}:{r['status']}" for r in rows
           if r["method"].startswith("ours") and r.get("status") not in ("ok",)]
    errs = [f"{r['workload']}/{SHORT.get(r['method'], r['method'])}" for r in rows
            if not r["method"].startswith("ours") and r.get("status") == "error"]
    if len(errs) > 8:
        errs = errs[:8] + [f"... {len(errs) - 8} more"]
    L.append(f"-- ours: {'all rows passed the check' if not bad else 'PROBLEMS: ' + ', '.join(bad)}"
             + (f"; baseline errors: {', '.join(errs)}" if errs else ""))
    L.append(f"-- json: {meta.get('out_json')}  png: {meta.get('out_png')}")
    L.append("=" * 118)
    return "\n".join(L)


def write_png(path: Path, rows, dry: bool) -> str | None:
    """Grouped bars of useful TFLOP/s (fwd, fwd+bwd) per workload per method. Returns an error string or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        return f"matplotlib unavailable ({_short_err(e)}); no PNG"
    good = [r for r in rows if r.get("status") in ("ok", "FAIL") and r.get("fwd_tflops")]
    workloads = []
    for r in good:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
    methods = []
    for r in good:
        lab = SHORT.get(r["method"], r["method"])
        if lab not in methods:
            methods.append(lab)
    if not workloads:
        return "no numbers to plot"
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 1.6 * len(workloads) + 2), 9), sharex=True)
    cmap = plt.get_cmap("tab10")
    color = {m: cmap(i % 10) for i, m in enumerate(methods)}
    for ax, key, akey, mult, title in ((axes[0], "fwd_tflops", "anchor_fwd_ms", 1.0, "forward"),
                                       (axes[1], "fwdbwd_tflops", "anchor_fwdbwd_ms", 3.5, "forward + backward")):
        labelled = set()
        for wi, w in enumerate(workloads):
            present = [r for r in good if r["workload"] == w]
            width = 0.8 / max(1, len(present))
            for j, r in enumerate(present):
                m = SHORT.get(r["method"], r["method"])
                x = wi - 0.4 + width * (j + 0.5)
                if r.get(key):
                    ax.bar(x, r[key], width=width, color=color[m], label=None if m in labelled else m)
                    labelled.add(m)
                # anchor (H200, 2026-11-29) as a black tick: same FLOPs, anchor time
                if r.get(akey) and r.get("fwd_ms") and r.get("fwd_tflops"):
                    flops = r["fwd_tflops"] * r["fwd_ms"] * mult
                    ax.plot([x - width / 2, x + width / 2], [flops / r[akey]] * 2, color="black", lw=1.5,
                            label=None if "anchor" in labelled else "anchor (H200 2026-11-29)")
                    labelled.add("anchor")
        ax.set_ylabel("useful TFLOP/s")
        ax.set_title(title + (" (DRY-RUN: meaningless)" if dry else ""))
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(range(len(workloads)))
    axes[1].set_xticklabels(workloads, rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8, ncol=min(5, len(methods) + 1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _jsonable(x):
    if isinstance(x, float):
        return None if (x != x or x in (float("inf"), float("-inf"))) else x
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# --------------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="fewer reps, D=128 dense rows only, no flex on the 36k-token deep tree, no packed cuDNN")
    p.add_argument("--workloads", default="",
                   help="comma list of tree workloads and/or dense rows (dense_L.._B.._H.._D..; 'dense' = all, "
                        "'tree' = all trees); default: all")
    p.add_argument("--only", default="",
                   help=f"comma list of methods: {','.join(TREE_METHODS + DENSE_METHODS)} or groups "
                        f"{','.join(sorted(ONLY_ALIASES))}; default: all")
    p.add_argument("--paths", default="auto", help="kernel paths for 'ours' rows: auto,sm80,sm90 (comma list)")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, lengths x1/64, Hq=4/Hkv=2, attention_ref as ours: exercises every path but CUDA timing")
    p.add_argument("--warmup", type=int, default=None, help="do_bench warmup in ms (default 25, quick 10)")
    p.add_argument("--rep", type=int, default=None, help="do_bench repetition time in ms (default 100, quick 40)")
    p.add_argument("--flex-max-tokens", type=int, default=None,
                   help="skip flex_tree (compile + block mask) on trees with more tokens (default: none; quick 34000, "
                        "i.e. the deep tree)")
    p.add_argument("--budget-s", type=float, default=float(os.environ.get("BENCH_BUDGET_S") or 0) or None,
                   help="time budget in seconds from process start: rows not started by then are skipped (default: env BENCH_BUDGET_S, "
                        "else none); JSON and table are also rewritten after every workload")
    p.add_argument("--check-tokens", type=int, default=8192,
                   help="tokens of the truncated correctness check when the full-size reference does not fit")
    p.add_argument("--out-json", default=None, help="default bench_results/bench-<date>.json")
    p.add_argument("--out-png", default=None, help="default: the JSON path with .png")
    p.add_argument("--out-table", default=None, help="default: the JSON path with .txt")
    a = p.parse_args(argv)
    a.warmup = a.warmup if a.warmup is not None else (10 if a.quick else 25)
    a.rep = a.rep if a.rep is not None else (40 if a.quick else 100)
    if a.flex_max_tokens is None and a.quick and not a.dry_run:
        a.flex_max_tokens = 34000  # the 36k-token deep tree: its flex compile + block mask are the slowest

    only = set()
    for tok in [t.strip() for t in a.only.split(",") if t.strip()]:
        if tok in ONLY_ALIASES:
            only.update(ONLY_ALIASES[tok])
        elif tok in TREE_METHODS + DENSE_METHODS:
            only.add(tok)
        elif tok in CANON.values():
            only.add({v: k for k, v in CANON.items()}[tok])
        else:
            p.error(f"--only: unknown method {tok!r}")
    if not only:
        only = set(TREE_METHODS + DENSE_METHODS)
        if a.quick:
            only.discard("packed_cudnn")
    a.only_set = only

    a.path_list = [t.strip().lower() for t in a.paths.split(",") if t.strip()] or ["auto"]
    for t in a.path_list:
        if t not in ("auto", "sm80", "sm90"):
            p.error(f"--paths: unknown kernel path {t!r} (auto, sm80, sm90)")

    all_trees = bl.workload_names()
    all_dense = bl.dense_configs(quick=False)
    dense_default = bl.dense_configs(quick=a.quick or a.dry_run)
    if not a.workloads.strip():
        a.tree_workloads, a.dense_list = all_trees, dense_default
    else:
        trees, dense = [], []
        for tok in [t.strip() for t in a.workloads.split(",") if t.strip()]:
            if tok == "tree":
                trees += [t for t in all_trees if t not in trees]
            elif tok == "dense":
                dense += [c for c in dense_default if c not in dense]
            elif tok in all_trees:
                trees.append(tok)
            elif tok in [bl.dense_name(*c) for c in all_dense]:
                dense.append(next(c for c in all_dense if bl.dense_name(*c) == tok))
            else:
                p.error(f"--workloads: unknown {tok!r}; trees: {', '.join(all_trees)}; dense: "
                        f"{', '.join(bl.dense_name(*c) for c in all_dense)}, or 'tree' / 'dense'")
        a.tree_workloads, a.dense_list = trees, dense
    return a


def write_reports(bench, meta, out_json: Path, out_table: Path, out_png: Path | None, t_start: float) -> str:
    """JSON + table (+ PNG when out_png): called after every workload (a run cut short keeps what it measured)
    and once at the end. Returns the table."""
    rows = bench.sorted_rows()
    meta["wall_s"] = round(time.perf_counter() - t_start, 1)
    ratios = compute_ratios(rows, bench.anchors)
    drift = anchor_drift(rows)
    if out_png is not None:
        try:
            png_err = write_png(out_png, rows, bench.dry)
        except Exception as e:  # noqa: BLE001
            png_err = f"PNG failed: {_short_err(e)}"
        if png_err:
            meta["out_png"] = None
            meta["png_error"] = png_err
    table = format_table(meta, rows, ratios, bench.workload_info, drift)
    doc = {"meta": meta, "workloads": bench.workload_info, "rows": rows, "ratios": ratios,
           "anchor_drift": drift, "table": table.splitlines()}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(_jsonable(doc), indent=1, default=str) + "\n")
    out_table.parent.mkdir(parents=True, exist_ok=True)
    out_table.write_text(table + "\n")
    return table


def main(argv=None) -> int:
    args = parse_args(argv)
    now = _dt.datetime.now()
    out_json = Path(args.out_json) if args.out_json else REPO / "bench_results" / (
        f"bench-{now:%Y-%m-%d-%H%M%S}" + ("-dryrun" if args.dry_run else "") + ".json")
    out_png = Path(args.out_png) if args.out_png else out_json.with_suffix(".png")
    out_table = Path(args.out_table) if args.out_table else out_json.with_suffix(".txt")

    bench = Bench(args)
    gpu = torch.cuda.get_device_name() if bench.device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    git = git_info()
    meta = {
        "date": now.isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "complete": False,
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "git_commit": git["commit"], "git_dirty": git["dirty"],
        "commit_short": (git["commit"] or "unknown")[:10] + ("+dirty" if git["dirty"] else ""),
        "command": " ".join(shlex.quote(x) for x in [sys.executable] + sys.argv),
        "flash_tree_attn_file": getattr(bench.fta, "__file__", None),
        "flash_tree_attn_version": getattr(bench.fta, "__version__", None),
        "extension_loaded": getattr(bench.fta._ops, "EXTENSION_LOADED", None),
        "extension_error": getattr(bench.fta._ops, "EXTENSION_ERROR", None) or None,
        "build_info": bench.fta._ops.build_info() if hasattr(bench.fta._ops, "build_info") else None,
        "warmup_ms": args.warmup, "rep_ms": args.rep, "quick": args.quick, "budget_s": args.budget_s,
        "dtype": str(bench.dtype).replace("torch.", ""),
        "timing": "triton.testing.do_bench median (L2 flushed); fwd with grad enabled; fwd+bwd = "
                  "autograd.grad(out, (q, k, v), fixed random grad); fresh torch.randn inputs per row",
        "flops": "tree: fwd = 4 * visible pairs * D * Hq (diagonal included); dense: pairs = B * L^2 / 2 (as the "
                 "anchors); fwd+bwd = 3.5 * fwd",
        "out_json": str(out_json), "out_png": str(out_png), "out_table": str(out_table),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        meta["triton"] = None
    log(f"bench: {meta['gpu']} torch {meta['torch']} triton {meta['triton']} commit {meta['commit_short']} "
        f"package {meta['flash_tree_attn_file']} extension_loaded={meta['extension_loaded']}")
    if meta["extension_error"] and not args.dry_run:
        log(f"bench: extension: {meta['extension_error']}")
    log(f"bench: trees={args.tree_workloads} dense={[bl.dense_name(*c) for c in args.dense_list]} "
        f"methods={sorted(args.only_set)} paths={args.path_list} warmup={args.warmup} rep={args.rep} "
        f"budget={args.budget_s}")
    t_start = time.perf_counter()

    def progress():
        try:
            write_reports(bench, meta, out_json, out_table, None, t_start)
        except Exception as e:  # noqa: BLE001 - a report failure must not stop the measurements
            log(f"bench: interim report failed: {_short_err(e)}")

    bench.run(progress)
    meta["complete"] = True
    table = write_reports(bench, meta, out_json, out_table, out_png, t_start)
    if meta.get("png_error"):
        log(f"bench: {meta['png_error']}")
    log(f"bench: wrote {out_json}, {out_table}" + ("" if meta.get("png_error") else f", {out_png}")
        + f" ({meta['wall_s']} s)")
    log("")
    log(table)
    bad = [r for r in bench.rows if r["method"].startswith("ours") and r.get("status") != "ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
