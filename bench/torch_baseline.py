#!/usr/bin/env python3
"""The merges of alloy_bench's BM_merge done with PyTorch eager operations on the CPU, the way
mergekit writes them (torch.stack of the task vectors, argsort for TIES's trim, torch.bernoulli
for DARE's drop, the sign election and disjoint mean of get_mask), on the same data as alloy_bench
(its fill formula), in the tensors' dtype as mergekit computes.

  torch_baseline.py [--elements N] [--json FILE]

Prints one line per case and writes JSON records {method, models, dtype, threads, ms}: the median
of 3 timed runs after one warm-up. Run by bench/run.sh beside alloy_bench.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch

DENSITY = 0.3  # alloy_bench's per-model density


def uniform_hash(x):
    """alloy_bench's uniform_hash: a 32-bit hash of x (uint64 array of 32-bit values) to [0, 1)."""
    m = np.uint64(0xFFFFFFFF)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(2246822519)) & m
    x = x ^ (x >> np.uint64(13))
    x = (x * np.uint64(3266489917)) & m
    x = x ^ (x >> np.uint64(16))
    return (x >> np.uint64(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def fill(count, seed, dtype):
    """alloy_bench's bench_value: base weights in [-0.02, 0.02), model `seed` adds [-0.001, 0.001)."""
    m = np.uint64(0xFFFFFFFF)
    i = (np.arange(count, dtype=np.uint64) * np.uint64(2654435761)) & m
    values = np.float32(0.04) * (uniform_hash(i) - np.float32(0.5))
    if seed:
        values = values + np.float32(0.002) * (uniform_hash((i + np.uint64(seed * 40503)) & m) - np.float32(0.5))
    return torch.from_numpy(values.astype(np.float32)).to(dtype)


def magnitude(tv, density):
    k = int(density * tv.numel())
    mask = torch.zeros_like(tv)
    w = tv.abs().view(-1).float()
    mask.view(-1)[torch.argsort(w, descending=True)[:k]] = 1
    return tv * mask


def bernoulli(tv, density):
    work = tv.float() if tv.dtype == torch.float16 else tv
    mask = torch.bernoulli(torch.full_like(work, density))
    return (work * mask / density).to(tv.dtype)


def merge(method, base, models, density=DENSITY):
    k = len(models)
    weights = torch.full((k,) + (1,) * base.dim(), 1.0 / k, dtype=base.dtype)  # broadcast as mergekit's
    if method == "linear":
        return (weights * torch.stack(models)).sum(0) / weights.sum(0)
    tvs = [m - base for m in models]
    if method == "ties":
        tvs = [magnitude(tv, density) for tv in tvs]
    elif method == "dare_ties":
        tvs = [bernoulli(tv, density) for tv in tvs]
    deltas = torch.stack(tvs)
    if method == "magmax":
        index = deltas.abs().argmax(0, keepdim=True)
        return base + deltas.gather(0, index).squeeze(0)
    weighted = deltas * weights
    if method == "task_arithmetic":
        return base + weighted.sum(0)
    # TIES and DARE-TIES: mergekit's get_mask(method="sum"), disjoint mean. alloy's TIES normalizes
    # by the agreeing weights; DARE-TIES does not (mergekit's defaults).
    majority = (weighted.sum(0) >= 0).to(base.dtype) * 2 - 1
    agree = weighted.sign() == majority
    mixed = (weighted * agree).sum(0)
    if method == "ties":
        divisor = (weights * agree).sum(0)
        divisor[divisor == 0] = 1
        mixed = mixed / divisor
    return base + mixed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--elements", type=int, default=1 << 24)
    parser.add_argument("--json")
    args = parser.parse_args()
    records = []
    torch.manual_seed(0)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for method in ("linear", "task_arithmetic", "ties", "dare_ties", "magmax"):
            for models in (2, 4, 8):
                for dtype in (torch.float32, torch.bfloat16):
                    base = fill(args.elements, 0, dtype)
                    tensors = [fill(args.elements, i + 1, dtype) for i in range(models)]
                    with torch.no_grad():
                        merge(method, base, tensors)
                        times = []
                        for _ in range(3):
                            started = time.perf_counter()
                            merge(method, base, tensors)
                            times.append((time.perf_counter() - started) * 1e3)
                    record = {"method": method, "elements": args.elements, "models": models, "dtype": "bf16" if dtype == torch.bfloat16 else "f32",
                              "threads": threads, "ms": statistics.median(times)}
                    records.append(record)
                    print("torch %-16s models %d %-4s threads %d  %8.1f ms" % (
                        method, models, record["dtype"], threads, record["ms"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "elements": args.elements, "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
