#!/usr/bin/env python3
"""Turns cuda_bench's JSON (--benchmark_out) into the Markdown table of docs/benchmarks.md."""
import json
import sys


def main():
    data = json.load(open(sys.argv[1]))
    rows = {}
    for b in data["benchmarks"]:
        name = b["name"].replace("/min_time:0.300", "").replace("/manual_time", "")
        kind, _, setup = name.partition("/")
        rows.setdefault(setup, {})[kind] = b
    print("| merge | dtype | parameters | models | alloy (us) | GB/s | of copy | PyTorch eager (us) | alloy speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for setup, kinds in rows.items():
        if "alloy" not in kinds:
            continue
        method, dtype, size, models = setup.split("/")
        a = kinds["alloy"]
        t = kinds.get("torch")
        print("| %s | %s | %s | %s | %.0f | %.0f | %.2f | %s | %s |" % (
            method, dtype.lower(), size, models[1:], a["real_time"], a["bytes_per_second"] / 1e9, a["of_copy"],
            "%.0f" % t["real_time"] if t else "-", "%.1fx" % a["x_torch"] if "x_torch" in a else "-"))


if __name__ == "__main__":
    main()
