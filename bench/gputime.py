# SPDX-License-Identifier: Apache-2.0
"""Timing shared by the GPU races (bench/fwd_race.py, bench/bwd_race.py,
bench/decode_race.py): each call of fn runs `iters` times inside one CUDA
graph (so the host's per-call cost is not timed), the graph is replayed
`reps` times and the best replay is kept."""
import torch


def graph_time(fn, iters, reps, stream=None):
    """Milliseconds per call of fn: iters calls in one CUDA graph captured
    on stream (a new side stream when None), best of reps replays. fn runs
    once first on that stream (our context and plan, cuDNN's plans)."""
    s = stream if stream is not None else torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        for _ in range(iters):
            fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) / iters)
    del g
    torch.cuda.synchronize()
    return best


def iters_for(ms_guess, budget_ms=40.0, lo=2, hi=50):
    """Calls per graph so that one replay takes about budget_ms."""
    return max(lo, min(hi, int(budget_ms / max(ms_guess, 1e-3))))
