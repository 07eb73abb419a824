#!/usr/bin/env python3
"""Writes alloy_bench's BM_merge grid and torch_baseline.py's results into docs/benchmarks.md
(bench/run.sh calls it):

  merge_table.py ALLOY_JSON TORCH_JSON DOC GRID_CSV

- between the cpu-merge-table markers: the 16 Mi-element cases beside PyTorch eager's times;
- between the cpu-scaling-table markers: time and triad ratio from 1 Mi to 256 Mi parameters, and
  time from 2 to 16 models;
- GRID_CSV: every case of the grid (policy, elements, models, dtype, threads, ms, vs_triad), which
  bench/plot_scaling.gp draws.
"""
import json
import platform
import re
import subprocess
import sys

SIZES = [1 << 20, 1 << 24, 1 << 26, 1 << 28]
POLICIES = ["linear", "task_arithmetic", "ties", "dare_ties", "magmax"]


def machine():
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return "%s, %s cores, %s" % (model, cores, platform.platform())


def replace_between(text, name, body):
    begin_marker = "<!-- %s:begin" % name
    end_marker = "<!-- %s:end -->" % name
    begin = text.index(begin_marker)
    end = text.index(end_marker) + len(end_marker)
    return text[:begin] + "%s (bench/run.sh rewrites this part) -->\n" % begin_marker + body + "\n" + end_marker + text[end:]


def size_name(elements):
    return "%d Mi" % (elements >> 20)


def main():
    alloy_json, torch_json, doc, grid_csv = sys.argv[1:5]
    alloy = json.load(open(alloy_json))
    torch = json.load(open(torch_json))
    baseline = {(r["method"], r["elements"], r["models"], r["dtype"], r["threads"]): r["ms"] for r in torch["records"]}
    cases = {}
    for b in alloy["benchmarks"]:
        m = re.match(r"BM_merge/(\w+)/elements:(\d+)/models:(\d+)/bf16:(\d)/threads:(\d)", b["name"])
        if not m or b.get("run_type") == "aggregate":
            continue
        method, elements, models, threads = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(5))
        dtype = "bf16" if m.group(4) == "1" else "f32"
        ms = b["real_time"] if b["time_unit"] == "ms" else b["real_time"] / 1e6
        cases[(method, elements, models, dtype, threads)] = (ms, b["vs_triad"])
    with open(grid_csv, "w") as f:
        f.write("policy,elements,models,dtype,threads,ms,vs_triad\n")
        for (method, elements, models, dtype, threads), (ms, ratio) in sorted(cases.items()):
            f.write("%s,%d,%d,%s,%d,%.4f,%.4f\n" % (method, elements, models, dtype, threads, ms, ratio))

    date = alloy["context"]["date"][:10]
    compared = []
    for method in POLICIES:
        for threads in (1, 2):
            for dtype in ("f32", "bf16"):
                for models in (2, 4, 8):
                    key = (method, 1 << 24, models, dtype, threads)
                    if key not in cases:
                        continue
                    ms, ratio = cases[key]
                    t = baseline.get(key)
                    compared.append("| %s | %d | %s | %d | %.1f | %.2f | %s | %s |" % (
                        method, models, dtype, threads, ms, ratio, "%.1f" % t if t else "-", "%.1fx" % (t / ms) if t else "-"))
    table = "\n".join([
        "%s; %s; 16 Mi elements per tensor; alloy: `alloy_bench --benchmark_filter=BM_merge "
        "--benchmark_min_time=0.5`, real time; PyTorch %s eager: `bench/torch_baseline.py`, median of 3 "
        "runs, same data and cases. `vs_triad`: alloy's bytes per second over the triad on the same "
        "thread count; `speed-up`: PyTorch's time over alloy's." % (date, machine(), torch["torch"]),
        "",
        "| policy | models | dtype | threads | alloy ms | vs_triad | PyTorch ms | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ] + compared)

    scaling = ["%s, the same run, 2 threads: milliseconds per merge and, in brackets, the ratio to the triad." % date, "",
               "| policy | dtype | models | " + " | ".join(size_name(s) for s in SIZES) + " |",
               "| --- | --- | --- | " + " | ".join("---" for _ in SIZES) + " |"]
    for method in POLICIES:
        for dtype in ("f32", "bf16"):
            for models in (2, 4, 8):
                cells = []
                for elements in SIZES:
                    c = cases.get((method, elements, models, dtype, 2))
                    cells.append("%.1f (%.2f)" % c if c else "-")
                scaling.append("| %s | %s | %d | %s |" % (method, dtype, models, " | ".join(cells)))
    scaling += ["", "Models from 2 to 16 at 16 Mi parameters, 2 threads (milliseconds; in brackets, per model):", "",
                "| policy | dtype | 2 | 4 | 8 | 16 |", "| --- | --- | --- | --- | --- | --- |"]
    for method in POLICIES:
        for dtype in ("f32", "bf16"):
            cells = []
            for models in (2, 4, 8, 16):
                c = cases.get((method, 1 << 24, models, dtype, 2))
                cells.append("%.1f (%.1f)" % (c[0], c[0] / models) if c else "-")
            scaling.append("| %s | %s | %s |" % (method, dtype, " | ".join(cells)))

    text = open(doc).read()
    text = replace_between(text, "cpu-merge-table", table)
    text = replace_between(text, "cpu-scaling-table", "\n".join(scaling))
    open(doc, "w").write(text)
    print("\n".join(compared))
    print("\n".join(scaling))


if __name__ == "__main__":
    main()
