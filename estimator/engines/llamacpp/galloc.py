"""A replay of ggml-alloc's greedy allocator (``ggml/src/ggml-alloc.c``): ``ggml_dyn_tallocr_alloc``
best fit, in-place reuse for ``ggml_op_can_inplace`` ops, free when the last consumer ran, over a
minimal ggml graph. ``graph.compute_buffers`` builds the llama graph and replays it here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

from .types import _pad

# --- compute buffer: replay of ggml-alloc over the llama graph ----------------------------------

_INPLACE_OPS = {"add", "mul", "rms_norm", "rope", "soft_max", "unary", "scale"}  # ggml_op_can_inplace


class Tallocr:
    """ggml_dyn_tallocr: best fit among free blocks except the last, else the (unbounded) tail."""

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self.free: list[list[int]] = [[0, 1 << 62]]
        self.max_size = 0

    def alloc(self, size: int) -> int:
        size = _pad(size, self.alignment)
        best = -1
        best_size = 1 << 63
        for i in range(len(self.free) - 1):
            if size <= self.free[i][1] <= best_size:
                best, best_size = i, self.free[i][1]
        if best == -1:
            best = len(self.free) - 1
        blk = self.free[best]
        off = blk[0]
        blk[0] += size
        blk[1] -= size
        if blk[1] == 0:
            del self.free[best]
        self.max_size = max(self.max_size, off + size)
        return off

    def release(self, off: int, size: int) -> None:
        size = _pad(size, self.alignment)
        fb = self.free
        for i, blk in enumerate(fb):
            if blk[0] + blk[1] == off:
                blk[1] += size
                if i + 1 < len(fb) and blk[0] + blk[1] == fb[i + 1][0]:
                    blk[1] += fb[i + 1][1]
                    del fb[i + 1]
                return
            if off + size == blk[0]:
                blk[0] = off
                blk[1] += size
                if i > 0 and fb[i - 1][0] + fb[i - 1][1] == blk[0]:
                    fb[i - 1][1] += blk[1]
                    del fb[i]
                return
        j = 0
        while j < len(fb) and fb[j][0] < off:
            j += 1
        fb.insert(j, [off, size])


class _Node(TypedDict):
    """A tensor of the graph: ``size`` bytes on ``dev`` ("gpu", "cpu" or "ext"), made by ``op`` from ``srcs``."""

    name: str
    size: int
    srcs: list[_Node]
    op: str
    dev: str
    view_of: _Node | None
    input: bool
    output: bool
    external: bool


class _State(TypedDict):
    """ggml-alloc's per-tensor bookkeeping (``struct hash_node``); ``off`` is set once allocated."""

    children: int
    views: int
    allocated: bool
    off: int | None
    own: bool


class _Graph:
    """A minimal ggml graph: nodes in execution order with sizes, sources and view links."""

    def __init__(self) -> None:
        self.nodes: list[_Node] = []

    def add(
        self,
        name: str,
        nbytes: int,
        srcs: Sequence[_Node | None],
        op: str = "op",
        dev: str = "gpu",
        view_of: _Node | None = None,
        inp: bool = False,
        out: bool = False,
    ) -> _Node:
        n: _Node = {
            "name": name,
            "size": nbytes,
            "srcs": [s for s in srcs if s is not None],
            "op": op,
            "dev": dev,
            "view_of": view_of,
            "input": inp,
            "output": out,
            "external": False,
        }
        self.nodes.append(n)
        return n

    @staticmethod
    def ext(name: str) -> _Node:
        """A tensor with its own data (weight or KV cache): never allocated by the graph allocator."""
        return {
            "name": name,
            "size": 0,
            "srcs": [],
            "op": "none",
            "dev": "ext",
            "view_of": None,
            "input": False,
            "output": False,
            "external": True,
        }


def _simulate(g: _Graph, alignments: dict[str, int]) -> dict[str, int]:
    """Replay ggml_gallocr_alloc_graph_impl; returns the max buffer size per device."""
    allocs = {d: Tallocr(a) for d, a in alignments.items()}
    state: dict[int, _State] = {}

    def st(t: _Node) -> _State:
        return state.setdefault(id(t), {"children": 0, "views": 0, "allocated": False, "off": None, "own": False})

    for n in g.nodes:
        if n["view_of"] is not None:
            st(n["view_of"])["views"] += 1
        for s in n["srcs"]:
            st(s)["children"] += 1

    def allocate(t: _Node) -> None:
        s = st(t)
        if t["external"] or s["allocated"] or s["own"] or t["view_of"] is not None:
            return
        s["allocated"] = s["own"] = True
        if t["op"] in _INPLACE_OPS:
            for p in t["srcs"]:
                ps = st(p)
                psize = p["view_of"]["size"] if p["view_of"] is not None else p["size"]
                if p["external"] or not ps["own"] or p["output"] or psize != t["size"] or p["dev"] != t["dev"]:
                    continue
                if ps["children"] == 1 and ps["views"] == 0:
                    if p["view_of"] is not None:
                        vs = st(p["view_of"])
                        if vs["views"] == 1 and vs["children"] == 0:
                            s["off"] = vs["off"]
                            ps["allocated"] = False
                            vs["allocated"] = False
                            return
                    else:
                        s["off"] = ps["off"]
                        ps["allocated"] = False
                        return
        s["off"] = allocs[t["dev"]].alloc(t["size"])

    def free(t: _Node) -> None:
        if t["output"] or t["external"]:
            return
        s = st(t)
        assert s["off"] is not None, "only an allocated tensor is freed"
        allocs[t["dev"]].release(s["off"], t["size"])
        s["allocated"] = False

    # inputs first, in order of use
    for n in g.nodes:
        if n["input"]:
            allocate(n)
        for p in n["srcs"]:
            if p["input"]:
                allocate(p)
    for n in g.nodes:
        for p in n["srcs"]:
            allocate(p)
        allocate(n)
        for p in n["srcs"]:
            ps = st(p)
            ps["children"] -= 1
            if ps["children"] == 0 and ps["views"] == 0:
                if p["view_of"] is not None:
                    v = p["view_of"]
                    vs = st(v)
                    vs["views"] -= 1
                    if vs["views"] == 0 and vs["children"] == 0 and vs["allocated"]:
                        free(v)
                elif ps["allocated"]:
                    free(p)
    return {d: a.max_size for d, a in allocs.items()}
