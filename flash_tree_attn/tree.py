"""Tree layouts: turn trees of token segments, or groups of token sequences, into packed tree-attention inputs.

Two entry points, both returning a :class:`TreeLayout`:

* :func:`layout_from_segments` takes trees written as segments ``(parent_index, length)``;
* :func:`pack_token_groups` takes groups of token-id sequences (one prompt's rollouts, multi-turn trajectories),
  stores every shared prefix once (a token-level prefix trie per group) and packs each group as one sequence.

Tokens are laid out in depth-first (preorder) order, children visited in order. In the arrays, each token is
its own tree node (a segment of L tokens is a chain of L nodes), so for token t of a packed sequence:

* ``start_q[t]`` = t (local to its sequence): the preorder index of the token's node;
* ``end_k[t]`` = local index of the last token in the subtree rooted at t (the last token of its segment's
  last descendant);
* ``position_ids[t]`` = depth of the token along its root path (root token 0), for RoPE.

Query t then sees key j (causal, same sequence) iff ``start_q[t] <= end_k[j]``, i.e. iff j is an ancestor of t
or t itself. The same arrays serve as the key arrays (queries and keys are the same tokens).

Everything token-sized is computed with numpy (repeat / cumsum / gathers); the tree structure itself is
resolved by pointer jumping over segments, so neither deep nor wide trees cost Python loops per token.

pack_token_groups sorts each group's sequences (as byte strings), takes the longest common prefix of
lexicographic neighbours with one numpy comparison each, and derives from those, per sequence, the depth
from which it adds new trie nodes and which earlier sequence owns the node it branches from (O(n) Python steps
per group of n sequences). Those runs of new tokens, cut at branch points, are the trie's segments; the token
arrays then come from the same segment machinery as layout_from_segments. Packing 64 groups x 16 sequences x
4096 tokens takes about 0.2 s from numpy arrays or tensors on one core (about 0.4 s from Python lists, the
extra time being the conversion of the lists); see tools/bench_pack.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

__all__ = ["TreeLayout", "layout_from_segments", "pack_token_groups"]

_INT32_MAX = 2**31 - 1


@dataclass
class TreeLayout:
    """Packed tree-attention inputs for B trees (one packed sequence per tree).

    Attributes:
        start_q: int32 (total,) per-sequence DFS start index of each token (also the key array's start).
        end_k: int32 (total,) per-sequence last DFS index in each token's subtree (also usable for queries).
        position_ids: int32 (total,) depth of each token along its root path (0 at the root token).
        cu_seqlens: int32 (B + 1,) prefix sums of the packed sequence lengths.
        max_seqlen: longest packed sequence (0 when there are no tokens).
        segments: per tree, its segments as ``(parent_index, length)`` tuples. For :func:`layout_from_segments`
            this is the input; for :func:`pack_token_groups` it is the trie, numbered in packed (DFS) order, and
            ``layout_from_segments(layout.segments)`` rebuilds the same arrays.
        segment_order: per tree, the segment indices in packed order.
        segment_offsets: per tree, for each segment index, the offset of its first token in the packed arrays
            (global, i.e. already including ``cu_seqlens[b]``; a zero-length segment gets the offset where its
            tokens would be).
        input_ids: int64 (total,) packed token ids (:func:`pack_token_groups` only).
        gather_index: one int64 index tensor per original sequence, in group order then sequence order:
            ``input_ids[gather_index[s]]`` is sequence s, and ``out[gather_index[s]]`` picks its per-token
            outputs from any packed result (:func:`pack_token_groups` only).
    """

    start_q: torch.Tensor
    end_k: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    segments: list[list[tuple[int, int]]]
    segment_order: list[list[int]]
    segment_offsets: list[list[int]]
    input_ids: torch.Tensor | None = None
    gather_index: list[torch.Tensor] | None = field(default=None)

    @property
    def num_sequences(self) -> int:
        return int(self.cu_seqlens.shape[0]) - 1

    @property
    def total_tokens(self) -> int:
        return int(self.start_q.shape[0])

    @property
    def seqlens(self) -> list[int]:
        cu = self.cu_seqlens.tolist()
        return [cu[i + 1] - cu[i] for i in range(len(cu) - 1)]

    def to(self, device) -> TreeLayout:
        """A copy with every tensor moved to ``device``."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        gi = None
        if self.gather_index is not None:
            lens = [int(t.shape[0]) for t in self.gather_index]
            flat = torch.cat(self.gather_index) if self.gather_index else torch.zeros(0, dtype=torch.int64)
            gi = list(flat.to(device).split(lens)) if lens else []
        return replace(self, start_q=mv(self.start_q), end_k=mv(self.end_k), position_ids=mv(self.position_ids),
                       cu_seqlens=mv(self.cu_seqlens), input_ids=mv(self.input_ids), gather_index=gi)

    def varlen_kwargs(self) -> dict:
        """Keyword arguments for ``flash_attn_varlen_func(q, k, v, **layout.varlen_kwargs())``."""
        return dict(cu_seqlens_q=self.cu_seqlens, cu_seqlens_k=self.cu_seqlens, max_seqlen_q=self.max_seqlen,
                    max_seqlen_k=self.max_seqlen, causal=True, tree_dfs_order_start_q=self.start_q,
                    tree_dfs_order_end_k=self.end_k)


# ----------------------------------------------------------------------------------------------------------
# Core: preorder layout of a forest of segments, by pointer jumping
# ----------------------------------------------------------------------------------------------------------

def _layout_core(parent: np.ndarray, length: np.ndarray, key: np.ndarray):
    """Preorder layout of a forest given by global parent pointers (-1 for roots).

    Siblings (roots included) are visited in increasing ``key``. Returns, per segment, the offset of its first
    token, its preorder rank, the offset just past its subtree, and the number of tokens on its strict ancestors.
    All four are found with pointer jumping (O(N log N) numpy work in O(log N) vectorized steps).
    """
    n = parent.shape[0]
    sup = n  # a virtual super-root, parent of every root; index n in the extended arrays
    par = np.empty(n + 1, dtype=np.int64)
    par[:n] = np.where(parent < 0, sup, parent)
    par[sup] = sup
    ln = np.zeros(n + 1, dtype=np.int64)
    ln[:n] = length

    # Children of each node, sorted by key: first child and next sibling pointers.
    first_child = np.full(n + 1, -1, dtype=np.int64)
    next_sib = np.full(n + 1, -1, dtype=np.int64)
    if n:
        by_parent = np.lexsort((key, par[:n]))
        sp = par[by_parent]
        starts = np.ones(n, dtype=bool)
        starts[1:] = sp[1:] != sp[:-1]
        first_child[sp[starts]] = by_parent[starts]
        cont = ~starts[1:]
        next_sib[by_parent[:-1][cont]] = by_parent[1:][cont]

    # after[v]: the node visited right after v's subtree = next sibling of the nearest ancestor-or-self that has
    # one (sup when none). Invariant while jumping: answer(v) = after[v] if known else answer(up[v]).
    after = next_sib.copy()
    after[sup] = sup
    up = par.copy()
    while True:
        todo = np.flatnonzero(after < 0)
        if todo.size == 0:
            break
        u = up[todo]
        after[todo] = after[u]
        up[todo] = up[u]

    # Preorder successor, then list ranking (Wyllie): tokens and nodes from v to the end of the list.
    nxt = np.where(first_child >= 0, first_child, after)
    nxt[sup] = sup
    tok_to_end = ln.copy()
    nodes_to_end = np.ones(n + 1, dtype=np.int64)
    nodes_to_end[sup] = 0
    while True:
        act = np.flatnonzero(nxt != sup)
        if act.size == 0:
            break
        t = nxt[act]
        tok_to_end[act] += tok_to_end[t]
        nodes_to_end[act] += nodes_to_end[t]
        nxt[act] = nxt[t]

    # Tokens on strict ancestors (the depth at which a segment's first token sits).
    depth0 = np.zeros(n + 1, dtype=np.int64)
    depth0[:n] = ln[par[:n]]
    up = par.copy()
    while True:
        act = np.flatnonzero(up != sup)
        if act.size == 0:
            break
        t = up[act]
        depth0[act] += depth0[t]
        up[act] = up[t]

    total = int(ln.sum())
    offset = total - tok_to_end[:n]
    pre = n - nodes_to_end[:n]
    after_offset = total - tok_to_end[after[:n]]
    return offset, pre, after_offset, depth0[:n], total


def _token_arrays(length, tree_id, num_trees, offset, pre, after_offset, depth0, total):
    """Token-level arrays from the per-segment layout (numpy int64), plus the preorder and a function that
    spreads a per-segment value over that segment's tokens."""
    n = length.shape[0]
    if total > _INT32_MAX:
        raise ValueError(f"the packed layout has {total} tokens, more than int32 indices can address")
    seqlens = np.bincount(tree_id, weights=length, minlength=num_trees).astype(np.int64) if n else np.zeros(
        num_trees, dtype=np.int64)
    cu = np.zeros(num_trees + 1, dtype=np.int64)
    np.cumsum(seqlens, out=cu[1:])
    by_pre = np.empty(n, dtype=np.int64)
    by_pre[pre] = np.arange(n, dtype=np.int64)
    lens_pre = length[by_pre]
    tok = np.arange(total, dtype=np.int64)

    def spread(per_segment: np.ndarray) -> np.ndarray:
        # Segments are laid out back to back in preorder, so a repeat in that order lines up with the tokens.
        return np.repeat(per_segment[by_pre], lens_pre)

    base = cu[tree_id]
    start = tok - spread(base)
    end = spread(after_offset - 1 - base)
    pos = tok + spread(depth0 - offset)
    return start, end, pos, cu, seqlens, by_pre, spread


def _to_i32(a: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int32)).to(device)


# ----------------------------------------------------------------------------------------------------------
# layout_from_segments
# ----------------------------------------------------------------------------------------------------------

def _short(x, limit: int = 60) -> str:
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _diagnose_segments(rows, b: int) -> None:
    """Find and report the first malformed (parent_index, length) entry of tree b."""
    for i, seg in enumerate(rows):
        if isinstance(seg, torch.Tensor):
            seg = seg.tolist()
        if isinstance(seg, (str, bytes)) or not hasattr(seg, "__len__") or len(seg) != 2:
            raise ValueError(f"tree {b}, segment {i}: expected a (parent_index, length) pair, got {_short(seg)} "
                             "(trees must be a list of trees, each a list of (parent_index, length) pairs)")
        for what, x in zip(("parent_index", "length"), seg):
            if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
                raise ValueError(f"tree {b}, segment {i}: {what} must be an integer, got {_short(x)} "
                                 f"({type(x).__name__})")
            if not -(2**62) < int(x) < 2**62:
                raise ValueError(f"tree {b}, segment {i}: {what}={int(x)} is out of range")
    raise ValueError(f"tree {b}: expected a list of (parent_index, length) integer pairs")


def _parse_tree(tree, b: int) -> np.ndarray:
    """Validate one tree and return its segments as an int64 (S, 2) array."""
    if isinstance(tree, torch.Tensor):
        tree = tree.detach().cpu().numpy()
    if isinstance(tree, np.ndarray):
        rows = tree
        if tree.size == 0 and tree.ndim >= 1 and tree.shape[0] == 0:
            return np.zeros((0, 2), dtype=np.int64)
        arr = tree
    else:
        if isinstance(tree, (str, bytes, dict)) or not hasattr(tree, "__iter__"):
            raise ValueError(f"tree {b}: expected a list of (parent_index, length) pairs, got {_short(tree)}")
        rows = list(tree)
        if not rows:
            return np.zeros((0, 2), dtype=np.int64)
        try:
            arr = np.array(rows)
        except (ValueError, TypeError, OverflowError):
            arr = None
    if arr is None or arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "iu":
        _diagnose_segments(rows, b)
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > 2**62:
        _diagnose_segments(rows, b)
    arr = arr.astype(np.int64)
    parent, length = arr[:, 0], arr[:, 1]
    s = arr.shape[0]
    idx = np.arange(s, dtype=np.int64)
    bad_root = np.zeros(s, dtype=bool)
    bad_root[0] = parent[0] != -1
    extra_root = (parent == -1) & (idx > 0)
    out_of_range = ((parent < -1) | (parent >= s)) & (idx > 0)
    not_before = (parent >= idx) & (parent < s) & (idx > 0)
    negative = length < 0
    too_long = length > _INT32_MAX
    bad = bad_root | extra_root | out_of_range | not_before | negative | too_long
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        p, n_tok = int(parent[i]), int(length[i])
        where = f"tree {b}, segment {i}"
        if bad_root[i]:
            raise ValueError(f"{where}: segment 0 is the root and must have parent_index -1, got {p}")
        if extra_root[i]:
            raise ValueError(f"{where}: parent_index -1 but only segment 0 may be the root (to pack a forest, "
                             "give it a zero-length root segment)")
        if out_of_range[i]:
            raise ValueError(f"{where}: parent_index {p} is out of range; the tree has {s} segments (0..{s - 1})")
        if not_before[i]:
            what = "is its own parent (a cycle)" if p == i else (
                f"has parent {p}, which is not listed before it; parents must come before their children (this "
                "also rules out cycles)")
            raise ValueError(f"{where}: segment {i} {what}")
        if negative[i]:
            raise ValueError(f"{where}: length must be >= 0, got {n_tok}")
        raise ValueError(f"{where}: length {n_tok} is too large (int32 indices address at most {_INT32_MAX} tokens)")
    return arr


def layout_from_segments(trees, device=None) -> TreeLayout:
    """Build packed tree-attention arrays from trees given as segments.

    ``trees`` holds one tree per packed sequence. A tree is a list of segments ``(parent_index, length)``
    (tuples, lists, or an integer (S, 2) array): segment 0 is the root (parent -1), every other segment names
    an earlier segment as parent (so there are no cycles); depth and fan-out are unrestricted. Tokens are laid
    out by a DFS that visits children in list order; a child segment continues at its parent's last token.

    Zero-length segments are allowed: they hold no tokens and their children hang from the nearest ancestor
    that has tokens. In particular a zero-length root turns a tree into a forest whose top-level branches do
    not see each other (their first tokens get position id 0). An empty tree (no segments) is an empty
    sequence.

    Raises ValueError naming the tree and segment for malformed input (wrong pair shape, non-integers, a root
    that is not -1, a second root, a parent out of range or not listed before its child, a negative length).
    """
    if isinstance(trees, (str, bytes, dict)) or not hasattr(trees, "__iter__"):
        raise ValueError(f"layout_from_segments: trees must be a list of trees, got {_short(trees)}")
    arrays = [_parse_tree(t, b) for b, t in enumerate(trees)]
    num_trees = len(arrays)
    sizes = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    base = np.zeros(num_trees + 1, dtype=np.int64)
    np.cumsum(sizes, out=base[1:])
    if num_trees and int(base[-1]):
        allseg = np.concatenate(arrays, axis=0)
    else:
        allseg = np.zeros((0, 2), dtype=np.int64)
    n = allseg.shape[0]
    tree_id = np.repeat(np.arange(num_trees, dtype=np.int64), sizes)
    local_parent = allseg[:, 0]
    length = allseg[:, 1].copy()
    parent = np.where(local_parent < 0, -1, local_parent + base[:-1][tree_id])
    key = np.arange(n, dtype=np.int64)
    offset, pre, after_offset, depth0, total = _layout_core(parent, length, key)
    start, end, pos, cu, seqlens, by_pre, _ = _token_arrays(length, tree_id, num_trees, offset, pre,
                                                             after_offset, depth0, total)
    # Trees are contiguous in preorder, in tree order: tree b's segments hold ranks base[b] .. base[b+1]-1.
    order_local = (by_pre - base[:-1][tree_id[by_pre]]).tolist()
    offsets_all = offset.tolist()
    b_list = base.tolist()
    segment_order = [order_local[b_list[b]:b_list[b + 1]] for b in range(num_trees)]
    segment_offsets = [offsets_all[b_list[b]:b_list[b + 1]] for b in range(num_trees)]
    segments = [list(zip(a[:, 0].tolist(), a[:, 1].tolist())) for a in arrays]
    return TreeLayout(
        start_q=_to_i32(start, device),
        end_k=_to_i32(end, device),
        position_ids=_to_i32(pos, device),
        cu_seqlens=_to_i32(cu, device),
        max_seqlen=int(seqlens.max()) if num_trees else 0,
        segments=segments,
        segment_order=segment_order,
        segment_offsets=segment_offsets,
    )


# ----------------------------------------------------------------------------------------------------------
# pack_token_groups
# ----------------------------------------------------------------------------------------------------------

def _token_array(seq, g: int, s: int) -> np.ndarray:
    where = f"group {g}, sequence {s}"
    if isinstance(seq, torch.Tensor):
        if seq.dim() != 1:
            raise ValueError(f"{where}: expected a 1-D sequence of token ids, got shape {tuple(seq.shape)}")
        if seq.dtype.is_floating_point or seq.dtype.is_complex or seq.dtype == torch.bool:
            raise ValueError(f"{where}: token ids must be integers, got dtype {seq.dtype}")
        arr = seq.detach().cpu().numpy()
    elif isinstance(seq, np.ndarray):
        arr = seq
    else:
        if isinstance(seq, (str, bytes, dict)) or not hasattr(seq, "__len__"):
            raise ValueError(f"{where}: expected a sequence of token ids, got {_short(seq)}")
        if len(seq) == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            arr = np.asarray(seq)
        except (ValueError, TypeError, OverflowError) as e:
            raise ValueError(f"{where}: could not read token ids ({e})") from None
    if arr.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D sequence of token ids, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{where}: token ids must be integers, got {arr.dtype} values such as {_short(arr[0])}")
    if arr.dtype == np.uint64 and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{where}: token id {int(arr.max())} does not fit in int64")
    return arr.astype(np.int64, copy=False)


def _lcp(tokens: np.ndarray, a0: int, la: int, b0: int, lb: int) -> int:
    m = min(la, lb)
    if m == 0:
        return 0
    diff = tokens[a0:a0 + m] != tokens[b0:b0 + m]
    i = int(diff.argmax())
    return i if diff[i] else m


def _best_earlier(sorted_ids: list[int], adj_lcp: list[int]) -> tuple[list[int], list[int]]:
    """For each sequence, the longest common prefix with any earlier sequence (in input order) and one
    earlier sequence achieving it (-1 if none).

    In lexicographic order the LCP of two sequences is the minimum adjacent LCP between them, so the best earlier
    partner is the nearest earlier one on the left or on the right; a monotonic stack finds both in O(n).
    """
    n = len(sorted_ids)
    best = [0] * n
    witness = [-1] * n
    for direction in (1, -1):
        positions = range(n) if direction == 1 else range(n - 1, -1, -1)
        stack: list[list[int]] = []  # entries [sequence id, min adjacent LCP from it up to the next entry]
        for p in positions:
            sid = sorted_ids[p]
            if stack:
                gap = adj_lcp[p - 1] if direction == 1 else adj_lcp[p]
                if gap < stack[-1][1]:
                    stack[-1][1] = gap
                while stack and stack[-1][0] > sid:
                    g = stack.pop()[1]
                    if stack and g < stack[-1][1]:
                        stack[-1][1] = g
                if stack:
                    cand_id, cand_lcp = stack[-1]
                    if cand_lcp > best[sid] or witness[sid] < 0:
                        best[sid] = cand_lcp
                        witness[sid] = cand_id
            stack.append([sid, 1 << 62])
    return best, witness


def _prefix_owners(tokens: np.ndarray, sortable: np.ndarray, starts: list[int], lens: list[int]):
    """Prefix structure of one group of sequences (given by offsets into ``tokens``).

    Returns ``m`` and ``attach``: ``m[s]`` is the longest common prefix of sequence s with any earlier sequence,
    and ``attach[s]`` is the earlier sequence that first had the prefix of length ``m[s]`` (the owner of the trie
    node s branches from), -1 when ``m[s] == 0``. Work: one sort of the sequences (as byte strings), one
    vectorized comparison per lexicographic neighbour pair, then O(n) Python steps per group (plus a walk up the
    owner chain per sequence).
    """
    n = len(lens)
    keys = [sortable[starts[i]:starts[i] + lens[i]].tobytes() for i in range(n)]
    order = sorted(range(n), key=keys.__getitem__)
    del keys
    adj = [_lcp(tokens, starts[order[k]], lens[order[k]], starts[order[k + 1]], lens[order[k + 1]])
           for k in range(n - 1)]
    best, witness = _best_earlier(order, adj)
    m = [0] * n
    attach = [-1] * n
    for s in range(n):
        m[s] = best[s]
        if m[s] == 0:
            continue
        # The witness shares m[s] tokens with s, but may have got the node at depth m[s]-1 from its own
        # ancestors: walk up the owners until one owns that depth (owners' m strictly decrease on the way).
        o = witness[s]
        while m[o] > m[s] - 1:
            o = attach[o]
        attach[s] = o
    return m, attach


def pack_token_groups(groups, device=None) -> TreeLayout:
    """Pack groups of token sequences as prefix trees, one packed sequence per group.

    ``groups`` is a list of groups; a group is a list of sequences of token ids (lists, 1-D numpy arrays or 1-D
    integer tensors). Within a group, every prefix shared by several sequences is stored once (a token-level
    prefix trie), laid out in DFS order with children in order of first appearance (input order). Duplicate
    sequences, sequences that are prefixes of others and empty sequences are fine; sequences that share no first
    token hang from a zero-length root, so they do not see each other.

    Returns a :class:`TreeLayout` with ``input_ids`` (int64 packed tokens) and ``gather_index`` (one int64 index
    tensor per input sequence, group order then sequence order): ``input_ids[gather_index[s]]`` equals
    sequence s, and the same index gathers that sequence's per-token outputs from a packed result.
    """
    if isinstance(groups, (str, bytes, dict)) or not hasattr(groups, "__iter__"):
        raise ValueError(f"pack_token_groups: groups must be a list of groups of sequences, got {_short(groups)}")
    arrays: list[np.ndarray] = []
    group_sizes: list[int] = []
    for g, grp in enumerate(groups):
        if isinstance(grp, (str, bytes, dict)) or not hasattr(grp, "__iter__"):
            raise ValueError(f"group {g}: expected a list of token sequences, got {_short(grp)}")
        count = 0
        for s, seq in enumerate(grp):
            arrays.append(_token_array(seq, g, s))
            count += 1
        group_sizes.append(count)
    num_groups = len(group_sizes)
    lens_np = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    seq_start_np = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lens_np, out=seq_start_np[1:])
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    del arrays
    # Byte strings that sort like the token sequences (big-endian, sign bit flipped), prefixes first.
    sortable = (tokens.view(np.uint64) ^ np.uint64(1 << 63)).astype(">u8")
    lens = lens_np.tolist()
    seq_start = seq_start_np.tolist()

    # The trie of a group is made of runs: sequence s owns the nodes at depths m[s] .. len(s)-1 (the ones no
    # earlier sequence has), hanging from the node at depth m[s]-1, which sequence attach[s] owns. Runs are cut
    # into pieces where later sequences branch off, so that every branch hangs from the end of a piece.
    p_parent: list[int] = []  # pieces, all groups: parent piece (-1: root of its group's tree)
    p_len: list[int] = []
    p_key: list[int] = []  # sibling order: the owning sequence (first appearance)
    p_tree: list[int] = []
    p_src: list[int] = []  # offset of the piece's first token in `tokens`
    run_piece = [-1] * len(lens)  # first piece of each sequence's run
    own_from = [0] * len(lens)  # m of each sequence (global index)
    path_seq: list[int] = []  # per sequence, its root path as runs (owner, lo, hi), in increasing depth
    path_lo: list[int] = []
    path_hi: list[int] = []
    gbase = 0
    for g, n in enumerate(group_sizes):
        m, attach = _prefix_owners(tokens, sortable, seq_start[gbase:gbase + n], lens[gbase:gbase + n])
        glens = lens[gbase:gbase + n]
        cuts: list[set] = [set() for _ in range(n)]
        roots = 0
        for s in range(n):
            if glens[s] > m[s]:
                o = attach[s]
                if o < 0:
                    roots += 1
                elif m[s] < glens[o]:
                    cuts[o].add(m[s])
        root_piece = -1
        if roots > 1:  # several first tokens: a zero-length root keeps the branches apart
            root_piece = len(p_len)
            p_parent.append(-1)
            p_len.append(0)
            p_key.append(gbase)
            p_tree.append(g)
            p_src.append(0)
        end_piece = {}  # (owner, depth where the piece ends) -> piece id
        for s in range(n):
            if glens[s] <= m[s]:
                continue
            prev = root_piece if attach[s] < 0 else end_piece[(attach[s], m[s])]
            bounds = [m[s]] + sorted(cuts[s]) + [glens[s]]
            run_piece[gbase + s] = len(p_len)
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                pid = len(p_len)
                p_parent.append(prev)
                p_len.append(hi - lo)
                p_key.append(gbase + s)
                p_tree.append(g)
                p_src.append(seq_start[gbase + s] + lo)
                end_piece[(s, hi)] = pid
                prev = pid
        for s in range(n):
            own_from[gbase + s] = m[s]
            runs = []  # deepest first: s's own run, then the runs of the owners above it
            hi, o = glens[s], s
            while True:
                if hi > m[o]:
                    runs.append((gbase + o, m[o], hi))
                hi = m[o]
                o = attach[o]
                if o < 0:
                    break
            for owner, lo, hi in reversed(runs):
                path_seq.append(owner)
                path_lo.append(lo)
                path_hi.append(hi)
        gbase += n

    parent = np.array(p_parent, dtype=np.int64)
    length = np.array(p_len, dtype=np.int64)
    key = np.array(p_key, dtype=np.int64)
    tree_id = np.array(p_tree, dtype=np.int64)
    src = np.array(p_src, dtype=np.int64)
    offset, pre, after_offset, depth0, total = _layout_core(parent, length, key)
    start, end, pos, cu, seqlens, by_pre, spread = _token_arrays(
        length, tree_id, num_groups, offset, pre, after_offset, depth0, total)
    input_ids = tokens[np.arange(total, dtype=np.int64) + spread(src - offset)]

    # Gather indices. A run is contiguous in the packed order (each piece's continuation is its first child,
    # as its owner appeared before any sequence branching there), so node (owner o, depth d) sits at
    # offset[run_piece[o]] + d - m[o].
    h_owner = np.array(path_seq, dtype=np.int64)
    h_lo = np.array(path_lo, dtype=np.int64)
    h_len = np.array(path_hi, dtype=np.int64) - h_lo
    if h_owner.size:
        first_val = offset[np.array(run_piece, dtype=np.int64)[h_owner]] - np.array(own_from)[h_owner] + h_lo
    else:
        first_val = h_lo
    n_idx = int(h_len.sum())
    out_start = np.zeros(h_len.shape[0], dtype=np.int64)
    if h_len.size:
        np.cumsum(h_len[:-1], out=out_start[1:])
    flat_index = np.repeat(first_val - out_start, h_len) + np.arange(n_idx, dtype=np.int64)
    gather_flat = torch.from_numpy(flat_index).to(device)
    gather_index = list(gather_flat.split(lens)) if lens else []

    # Segments in packed order, per group.
    n_pieces = length.shape[0]
    g_sizes = np.bincount(tree_id, minlength=num_groups) if n_pieces else np.zeros(num_groups, dtype=np.int64)
    g_base = np.zeros(num_groups + 1, dtype=np.int64)
    np.cumsum(g_sizes, out=g_base[1:])
    par_pre = np.where(parent[by_pre] < 0, -1, pre[np.maximum(parent[by_pre], 0)] - g_base[:-1][tree_id[by_pre]])
    par_list = par_pre.tolist()
    len_list = length[by_pre].tolist()
    off_list = offset[by_pre].tolist()
    gb = g_base.tolist()
    segments = [list(zip(par_list[gb[g]:gb[g + 1]], len_list[gb[g]:gb[g + 1]])) for g in range(num_groups)]
    segment_order = [list(range(gb[g + 1] - gb[g])) for g in range(num_groups)]
    segment_offsets = [off_list[gb[g]:gb[g + 1]] for g in range(num_groups)]
    return TreeLayout(
        start_q=_to_i32(start, device),
        end_k=_to_i32(end, device),
        position_ids=_to_i32(pos, device),
        cu_seqlens=_to_i32(cu, device),
        max_seqlen=int(seqlens.max()) if num_groups else 0,
        segments=segments,
        segment_order=segment_order,
        segment_offsets=segment_offsets,
        input_ids=torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)).to(device),
        gather_index=gather_index,
    )
