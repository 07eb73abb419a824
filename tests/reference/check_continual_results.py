#!/usr/bin/env python3
"""Checks the results.json of `clip_continual run` against the issue's schema, recomputes its
metrics from the accuracy matrices with NumPy, and (given a second file) checks that two runs,
one of them interrupted and resumed, gave the same accuracies.

    check_continual_results.py RUN_DIR [OTHER_RUN_DIR]
"""
import json
import pathlib
import sys

import numpy as np

KEYS = ["acc", "acc_std", "bwt", "bwt_std", "fwt", "heldout", "matrix", "train_s", "merge_s"]


def check(run_dir):
    run_dir = pathlib.Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    if "config" not in results or "methods" not in results:
        sys.exit(f"{run_dir}/results.json: no config or methods")
    for method in results["config"]["methods"]:
        if method not in results["methods"]:
            sys.exit(f"results.json lacks method {method}")
    zero = results["config"]["zero_shot_per_task"]
    orders = results["config"]["task_orders"]
    for key, m in results["methods"].items():
        missing = [k for k in KEYS if k not in m]
        if missing:
            sys.exit(f"method {key} lacks {missing}")
        r = np.array(m["matrix"])
        n = r.shape[0]
        if r.shape != (n, n) or not ((r >= 0) & (r <= 1)).all():
            sys.exit(f"method {key}: the matrix is not a square of accuracies")
        # ACC and BWT are linear in the matrix: their mean over orders is that of the mean matrix.
        acc = r[-1].mean()
        bwt = np.mean([r[-1, i] - r[i, i] for i in range(n - 1)])
        if abs(acc - m["acc"]) > 1e-9 or abs(bwt - m["bwt"]) > 1e-9:
            sys.exit(f"method {key}: ACC {m['acc']} / BWT {m['bwt']} differ from the matrix's {acc} / {bwt}")
        per_order = m["per_order"]["acc"]
        std = np.std(per_order, ddof=1) if len(per_order) > 1 else 0.0
        if abs(std - m["acc_std"]) > 1e-9:
            sys.exit(f"method {key}: acc_std {m['acc_std']} is not the standard deviation {std} of {per_order}")
        # FWT: each task's accuracy just before it is learned, less the base model's, per order.
        if key == "zero_shot" and (abs(m["fwt"]) > 1e-12 or abs(m["bwt"]) > 1e-12):
            sys.exit("zero_shot has non-zero transfer")
        if m["train_s"] < 0 or m["merge_s"] < 0:
            sys.exit(f"method {key}: negative times")
    if "zero_shot" in results["methods"]:
        r = np.array(results["methods"]["zero_shot"]["matrix"])
        expected = np.mean([[zero[t] for t in order] for order in orders], axis=0)
        if not np.allclose(r[-1], expected):
            sys.exit("zero_shot's matrix is not the base model's accuracy per task")
    if not (run_dir / "report.md").exists():
        sys.exit(f"{run_dir}/report.md is missing")
    return results


def main():
    first = check(sys.argv[1])
    print(f"{sys.argv[1]}: {len(first['methods'])} methods, schema and metrics consistent")
    if len(sys.argv) > 2:
        second = check(sys.argv[2])
        for key, m in first["methods"].items():
            a, b = np.array(m["matrix"]), np.array(second["methods"][key]["matrix"])
            if not np.array_equal(a, b) or m["per_order"] != second["methods"][key]["per_order"]:
                sys.exit(f"method {key}: the resumed run's accuracies differ\n{a}\n{b}")
        print("the interrupted and resumed run gave the same accuracies as the uninterrupted one")


if __name__ == "__main__":
    main()
