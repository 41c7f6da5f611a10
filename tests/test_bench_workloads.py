"""CPU tests of the benchmark tooling: the standard workloads reproduce the sizes measured on the H200, the FLOP
conventions reproduce the anchors' TFLOP/s, and `tools/bench.py --dry-run` exercises every code path."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools"
sys.path.insert(0, str(TOOLS))

import bench_lib as bl  # noqa: E402

# name: (N, pairs, root-to-leaf paths, path tokens, longest path), measured with the anchors on the H200
EXPECTED = {
    "grpo_P4096_n8_R1024": (12288, 46143488, 8, 40960, 5120),
    "grpo_P1024_n16_R2048": (33792, 67650048, 16, 49152, 3072),
    "grpo_P8192_n4_R512": (10240, 50861056, 4, 34816, 8704),
    "deep_64nodes_128to1024": (35978, 106932941, 33, 114999, 5341),
    "chain_causal_16384": (16384, 134225920, 1, 16384, 16384),
}


def test_workload_file_matches_shared_copy():
    shared = REPO.parent / "shared" / "bench" / "workloads.json"
    ours = json.loads((TOOLS / "workloads.json").read_text())
    assert set(ours["workloads"]) == set(EXPECTED)
    assert ours["defaults"] == {"query_heads": 32, "kv_heads": 8, "head_dim": 128, "dtype": "bfloat16"}
    if shared.exists():
        assert json.loads(shared.read_text()) == ours


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_workload_sizes(name):
    n, pairs, paths, path_tokens, longest = EXPECTED[name]
    segs = bl.build_workload(name)
    st = bl.tree_stats(segs)
    assert (st["N"], st["pairs"], st["paths"], st["path_tokens"], st["longest_path"]) == EXPECTED[name]
    assert sum(bl.path_lengths(segs)) == path_tokens and max(bl.path_lengths(segs)) == longest
    assert bl.workload_heads(name) == (32, 8, 128)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_workload_matches_tree_and_reference(name):
    """The library's layout and pair count agree with the closed forms used by the bench."""
    from flash_tree_attn.reference import count_visible_pairs
    from flash_tree_attn.tree import layout_from_segments

    n, pairs = EXPECTED[name][:2]
    lay = layout_from_segments([bl.build_workload(name)])
    assert lay.cu_seqlens.tolist() == [0, n] and lay.max_seqlen == n
    assert count_visible_pairs(lay.cu_seqlens, lay.cu_seqlens, True, lay.start_q, lay.end_k) == pairs


def test_random_tree_rule_is_the_documented_one():
    import torch

    g = torch.Generator().manual_seed(1)
    root = int(torch.randint(128, 1024, (1,), generator=g))
    parent1 = int(torch.randint(0, 1, (1,), generator=g))
    len1 = int(torch.randint(128, 1024, (1,), generator=g))
    segs = bl.build_workload("deep_64nodes_128to1024")
    assert segs[0] == (-1, root) and segs[1] == (parent1, len1)
    assert len(segs) == 64 and all(128 <= n < 1024 for _, n in segs)
    assert all(0 <= p < i for i, (p, _) in enumerate(segs) if i)


def test_small_tree_bookkeeping():
    segs = [(-1, 3), (0, 2), (1, 1), (0, 4)]
    assert bl.dfs_segment_order(segs) == [0, 1, 2, 3]
    assert bl.root_to_leaf_paths(segs) == [[0, 1, 2], [0, 3]]
    assert bl.path_lengths(segs) == [6, 7]
    # brute force: token t of segment s sees its own earlier tokens and all tokens of its ancestors
    seg_tokens, pos = {}, 0
    for s in bl.dfs_segment_order(segs):
        seg_tokens[s] = list(range(pos, pos + segs[s][1]))
        pos += segs[s][1]
    brute = 0
    for s, toks in seg_tokens.items():
        anc, a = 0, segs[s][0]
        while a != -1:
            anc += segs[a][1]
            a = segs[a][0]
        brute += sum(anc + i + 1 for i in range(len(toks)))
    assert bl.count_pairs(segs) == brute == 6 + 3 * 3 + 6 + (4 * 3 + 10)
    assert bl.scale_segments(segs, 0.5) == [(-1, 2), (0, 1), (1, 1), (0, 2)]
    with pytest.raises(ValueError):
        bl.check_segments([(0, 3)])
    with pytest.raises(ValueError):
        bl.check_segments([(-1, 3), (1, 2)])


def test_flop_conventions_reproduce_the_anchors():
    """fwd = 4 * pairs * D * Hq (tree pairs incl. the diagonal), fwd+bwd = 3.5 * fwd; dense = B * L^2 / 2."""
    anchors = bl.load_anchors()
    checked = 0
    for (method, key), row in anchors.items():
        if key in EXPECTED and row.get("fwd_useful_tflops"):
            pairs = EXPECTED[key][1]
            assert bl.tflops(bl.fwd_flops(pairs, 128, 32), row["fwd_ms"]) == pytest.approx(
                row["fwd_useful_tflops"], rel=2e-3), (method, key)
            if row.get("fwdbwd_useful_tflops"):
                assert bl.tflops(bl.fwdbwd_flops(pairs, 128, 32), row["fwdbwd_ms"]) == pytest.approx(
                    row["fwdbwd_useful_tflops"], rel=2e-3), (method, key)
            checked += 1
        elif key.startswith("dense_") and row.get("fwd_tflops"):
            L, B, H, D = (row[x] for x in ("L", "B", "H", "D"))
            assert (L, B, H, D) in bl.dense_configs()
            assert bl.tflops(bl.fwd_flops(bl.dense_pairs(L, B), D, H), row["fwd_ms"]) == pytest.approx(
                row["fwd_tflops"], rel=2e-3), (method, key)
            checked += 1
    assert checked >= 20


def test_bench_args_and_report_helpers(tmp_path):
    import bench

    a = bench.parse_args(["--quick"])
    assert a.dense_list == bl.dense_configs(quick=True) and "packed_cudnn" not in a.only_set
    assert 33792 < a.flex_max_tokens < 35978 and a.rep < 100
    a = bench.parse_args(["--workloads", "chain_causal_16384,dense_L4096_B16_H32_D64", "--only", "ours,flex",
                          "--paths", "auto,sm80"])
    assert a.tree_workloads == ["chain_causal_16384"] and a.dense_list == [(4096, 16, 32, 64)]
    assert a.only_set == {"ours", "dense_ours", "flex"} and a.path_list == ["auto", "sm80"]
    a = bench.parse_args(["--workloads", "dense"])
    assert a.tree_workloads == [] and len(a.dense_list) == 6
    for bad in (["--workloads", "nope"], ["--only", "nope"], ["--paths", "sm70"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)

    w = "grpo_P4096_n8_R1024"
    rows = [
        {"section": "tree", "workload": w, "method": "ours", "status": "ok", "fwd_ms": 1.0, "fwdbwd_ms": 4.0,
         "fwd_tflops": 189.0, "fwdbwd_tflops": 165.0, "rel_err": 2e-3, "block_bounds_pct": 1.5,
         "block_bounds_ms": 0.015},
        {"section": "tree", "workload": w, "method": "flex_tree", "status": "ok", "fwd_ms": 2.0, "fwdbwd_ms": 6.0,
         "fwd_tflops": 94.5, "fwdbwd_tflops": 110.0, "anchor_fwd_ms": 1.914, "anchor_fwdbwd_ms": 7.5034},
        {"section": "tree", "workload": w, "method": "dup_prefix_sdpa_cudnn", "status": "error",
         "error": "RuntimeError: boom"},
        {"section": "dense", "workload": "dense_L16384_B4_H16_D128", "method": "ours", "status": "ok",
         "fwd_ms": 10.0, "fwdbwd_ms": 40.0, "fwd_tflops": 378.0, "fwdbwd_tflops": 330.0},
    ]
    ratios = bench.compute_ratios(rows, bl.load_anchors())
    (r,) = ratios
    assert r["vs_flex_fwd"] == pytest.approx(2.0) and r["vs_flex_src"] == "fresh"
    assert r["vs_dup_cudnn_src"] == "anchor" and r["vs_dup_cudnn_fwd"] == pytest.approx(3.105)
    assert r["tflops_vs_dense_fwd"] == pytest.approx(0.5)
    drift = bench.anchor_drift(rows)
    assert drift["n"] == 2
    meta = {"date": "d", "gpu": "g", "torch": "t", "commit_short": "c", "dry_run": False, "out_json": "j",
            "out_png": None}
    table = bench.format_table(meta, rows, ratios, {}, drift)
    assert "vs flex 2.00/1.50" in table and "vs dup_cudnn* " in table and "RuntimeError: boom" in table
    assert "block_bounds 1.50%" in table
    # the PNG writer never raises: it plots, or says why not
    err = bench.write_png(tmp_path / "x.png", rows, dry=False)
    assert err is None or "matplotlib" in err
    assert err is not None or (tmp_path / "x.png").stat().st_size > 0


def test_bench_row_status_rules():
    """A rel. error above 1e-2 or NaN marks a row FAIL; an exception becomes an error row; a spent time budget
    skips rows; our rows go first and the table groups rows by workload."""
    import torch

    import bench

    threads = torch.get_num_threads()
    try:
        b = bench.Bench(bench.parse_args(["--dry-run", "--workloads", "chain_causal_16384", "--budget-s", "1e-9"]))
        for err, status in ((2e-3, "ok"), (0.5, "FAIL"), (float("nan"), "FAIL")):
            r = b.row("tree", "w", "ours")
            b.guarded(r, lambda err=err: {"rel_err": err, "fwd_ms": 1.0})
            assert r["status"] == status, err

        def boom():
            raise RuntimeError("kernel exploded")
        r = b.row("tree", "w", "flex_tree")
        b.guarded(r, boom)
        assert r["status"] == "error" and "kernel exploded" in r["error"] and "Traceback" in r["traceback"]
        b.rows.clear()
        b.run()
        assert b.rows and all(r["status"] == "skipped" and "budget" in r["error"] for r in b.rows)
        names = [(r["workload"], r["method"]) for r in b.sorted_rows()]
        assert names[0] == ("chain_causal_16384", "ours")
        assert names[-1] == ("chain_causal_16384", "packed_causal_sdpa_cudnn") and len(names) == 6
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_bench_dry_run(tmp_path):
    out = tmp_path / "dry.json"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(TOOLS / "bench.py"), "--dry-run", "--out-json", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert wall < 60, f"dry run took {wall:.0f} s"
    doc = json.loads(out.read_text())
    assert doc["meta"]["dry_run"] is True
    rows = doc["rows"]
    methods = {(x["workload"], x["method"]) for x in rows}
    for name in EXPECTED:
        for m in ("ours", "flex_tree", "dup_prefix_sdpa_flash", "dup_prefix_sdpa_cudnn", "packed_causal_sdpa_flash"):
            assert (name, m) in methods
        ours = next(x for x in rows if x["workload"] == name and x["method"] == "ours")
        assert ours["status"] == "ok" and ours["rel_err"] == 0.0 and ours["fwd_ms"] > 0 and ours["fwdbwd_ms"] > 0
        flex = next(x for x in rows if x["workload"] == name and x["method"] == "flex_tree")
        assert flex["status"] == "ok" and flex["rel_err"] < 1e-2 and flex["block_mask_ms"] > 0
        dup = next(x for x in rows if x["workload"] == name and x["method"] == "dup_prefix_sdpa_flash")
        assert dup["status"] == "ok" and dup["paths"] == EXPECTED[name][2]
    assert any(x["section"] == "dense" and x["method"] == "ours" and x["status"] == "ok" for x in rows)
    assert len(doc["ratios"]) == len(EXPECTED)
    # the table is printed last, and also written beside the JSON
    tail = r.stdout.rstrip().splitlines()
    assert tail[-1].startswith("=====") and any("DRY-RUN" in line for line in tail[-80:])
    assert out.with_suffix(".txt").read_text().strip() == "\n".join(doc["table"]).strip()
