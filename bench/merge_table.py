#!/usr/bin/env python3
"""Writes alloy_bench's BM_merge results and torch_baseline.py's on the same cases into the table
between the cpu-merge-table markers of docs/benchmarks.md (bench/run.sh calls it)."""
import json
import platform
import re
import subprocess
import sys


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return "%s, %s cores, %s" % (model, cores, platform.platform())


def main():
    alloy_json, torch_json, doc = sys.argv[1:4]
    alloy = json.load(open(alloy_json))
    torch = json.load(open(torch_json))
    baseline = {(r["method"], r["models"], r["dtype"], r["threads"]): r["ms"] for r in torch["records"]}
    rows = []
    for b in alloy["benchmarks"]:
        m = re.match(r"BM_merge/(\w+)/elements:(\d+)/models:(\d+)/bf16:(\d)/threads:(\d)", b["name"])
        if not m:
            continue
        method, elements, models, bf16, threads = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4), int(m.group(5))
        dtype = "bf16" if bf16 == "1" else "f32"
        ms = b["real_time"] if b["time_unit"] == "ms" else b["real_time"] / 1e6
        t = baseline.get((method, models, dtype, threads))
        rows.append("| %s | %d | %s | %d | %.1f | %.2f | %s | %s |" % (
            method, models, dtype, threads, ms, b["vs_triad"], "%.1f" % t if t else "-", "%.1fx" % (t / ms) if t else "-"))
    date = alloy["context"]["date"][:10]
    table = "\n".join([
        "<!-- cpu-merge-table:begin (bench/run.sh rewrites this part) -->",
        "%s; %s; 16 Mi elements per tensor; alloy: `alloy_bench --benchmark_filter=BM_merge "
        "--benchmark_min_time=0.5`, real time; PyTorch %s eager: `bench/torch_baseline.py`, median of 3 "
        "runs, same data and cases. `vs_triad`: alloy's bytes per second over the triad on the same "
        "thread count; `speed-up`: PyTorch's time over alloy's." % (date, machine(), torch["torch"]),
        "",
        "| policy | models | dtype | threads | alloy ms | vs_triad | PyTorch ms | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ] + rows + ["<!-- cpu-merge-table:end -->"])
    text = open(doc).read()
    begin = text.index("<!-- cpu-merge-table:begin")
    end = text.index("<!-- cpu-merge-table:end -->") + len("<!-- cpu-merge-table:end -->")
    open(doc, "w").write(text[:begin] + table + text[end:])
    print("\n".join(rows))


if __name__ == "__main__":
    main()
