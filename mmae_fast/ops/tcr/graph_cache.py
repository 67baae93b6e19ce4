"""The CUDA graphs that replay stage 2 (``small_side``), and the device constants it reuses.

Stage 2 is 20 to 60 small kernels (n×n products, traces, a Cholesky): as one graph its CPU cost
is one replay plus the copies in and out. A graph bakes in every Python number its kernels were
captured with, so its key is derived, not listed: the inputs' (shape, dtype, device) and the
frozen ``small_side.Constants`` that stage 2 receives and computes with — nothing else reaches
it, so a new constant is in the key by construction.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import warnings

import torch
from torch import Tensor

#: Environment switch: MMAE_FAST_SMALL_SIDE_GRAPH=0 runs the small side eagerly on CUDA too.
GRAPH_ENV = "MMAE_FAST_SMALL_SIDE_GRAPH"


@dataclasses.dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    static_in: tuple
    static_out: tuple


def graph_key(inputs: tuple, constants) -> tuple:
    """What a captured graph depends on: each input's (shape, dtype, device) and the constants
    (a frozen dataclass: hashable, compared by value)."""
    return tuple((tuple(x.shape), x.dtype, x.device) for x in inputs), constants


def _capture(fn, inputs) -> _Captured:
    """Warm ``fn`` up on a side stream, then capture it (on the inputs' device: a capture on
    another device's stream would record an empty graph)."""
    device = inputs[0].device
    static_in = tuple(x.clone() for x in inputs)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up (cuSOLVER / cuBLAS handles and workspaces)
        for _ in range(2):
            fn(*static_in)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=torch.cuda.Stream(device=device)):
        static_out = fn(*static_in)
    return _Captured(graph, static_in, tuple(static_out))


class GraphCache:
    """What stage 2 keeps between calls: the most recently used ``max_graphs`` captured graphs
    (each holds its basis buffers: up to ~0.2 GB at n = 1024), the keys whose capture failed
    (they run eagerly, warned once), and device copies of host-computed weights."""

    def __init__(self, max_graphs: int = 8, max_constants: int = 4096):
        self.max_graphs, self.max_constants = max_graphs, max_constants
        self.graphs: collections.OrderedDict = collections.OrderedDict()
        self.failed: set = set()
        self.constants: dict = {}

    def clear(self) -> None:
        self.graphs.clear()
        self.failed.clear()
        self.constants.clear()

    def device_constant(self, values, like: Tensor) -> Tensor | None:
        """``values`` as a tensor on ``like``'s device in its dtype (cached; None while a CUDA
        graph is being captured and it is not cached yet: a host-to-device copy cannot be
        captured)."""
        key = (tuple(values), like.device, like.dtype)
        t = self.constants.get(key)
        if t is None:
            if like.is_cuda and torch.cuda.is_current_stream_capturing():
                return None
            t = torch.tensor(values, dtype=like.dtype, device=like.device)
            if len(self.constants) < self.max_constants:
                self.constants[key] = t
        return t

    def _entry(self, key, capture):
        """The graph of ``key`` (LRU), captured by ``capture()`` on a miss; None when capturing
        failed (warned once; the key then stays eager)."""
        if key in self.failed:
            return None
        if key not in self.graphs:
            while len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)  # the least recently used graph and its memory
            try:
                self.graphs[key] = capture()
            except Exception as exc:  # noqa: BLE001 - any capture failure: run eagerly from now on
                self.failed.add(key)
                warnings.warn(f"mmae_fast: the small side could not be captured as a CUDA graph "
                              f"({type(exc).__name__}: {exc}); it runs eagerly", RuntimeWarning)
                return None
        self.graphs.move_to_end(key)
        return self.graphs[key]

    def run(self, fn, inputs: tuple, constants) -> tuple:
        """``fn(*inputs, constants)`` replayed from a CUDA graph captured once per
        ``graph_key(inputs, constants)`` (CUDA tensors only).

        Eager where the graph cannot help or cannot be made: CPU tensors, while an outer CUDA
        graph is being captured (the kernels join that graph), on a stream other than the
        default one (torch.compile's cudagraph trees warm up on a side stream into their own
        memory pool, which must not end up holding this graph's static buffers), with
        MMAE_FAST_SMALL_SIDE_GRAPH=0, or after a failed capture. Capturing a new key
        synchronises the device once (as every CUDA-graph capture does); replays never do.
        Outputs are fresh tensors (cloned from the graph's static outputs)."""
        device = inputs[0].device
        if (not inputs[0].is_cuda or os.environ.get(GRAPH_ENV, "1") == "0"
                or torch.cuda.is_current_stream_capturing()
                or torch.cuda.current_stream(device) != torch.cuda.default_stream(device)):
            return fn(*inputs, constants)
        with torch.cuda.device(device):
            entry = self._entry(graph_key(inputs, constants),
                                lambda: _capture(lambda *x: fn(*x, constants), inputs))
            if entry is None:
                return fn(*inputs, constants)
            for static, x in zip(entry.static_in, inputs):
                static.copy_(x)
            entry.graph.replay()
            return tuple(out.clone() for out in entry.static_out)
