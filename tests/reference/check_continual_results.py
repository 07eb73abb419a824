#!/usr/bin/env python3
"""Checks the results.json of `clip_continual run` against the issue's schema, recomputes its
metrics from the accuracy matrices with NumPy and its 95% intervals (each method's, and the paired
differences of methods on the same orders) with SciPy's Student t, and (given a second file)
checks that two runs, one of them interrupted and resumed, gave the same accuracies.

    check_continual_results.py RUN_DIR [OTHER_RUN_DIR [--tolerance T]]

With --tolerance, the two runs may differ by T in every accuracy (runs whose sums are taken in
another order: one process against several), but not in the base model's.
"""
import json
import pathlib
import sys

import numpy as np
from scipy import stats

KEYS = ["acc", "acc_std", "acc_ci95", "bwt", "bwt_std", "bwt_ci95", "fwt", "heldout", "heldout_ci95",
        "acc_after_each_task", "matrix", "train_s", "merge_s", "rank_kept_after_each_task"]


def interval(values):
    """The mean and 95% interval of Student's t, None without an interval (one value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def check_interval(name, got, values):
    expected = interval(values)
    if expected is None:
        if got is not None:
            sys.exit(f"{name}: an interval {got} from one order")
        return
    if got is None or abs(got[0] - expected[0]) > 1e-9 or abs(got[1] - expected[1]) > 1e-9:
        sys.exit(f"{name}: interval {got}, SciPy's t gives {expected} for {list(values)}")


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
        for metric in ["acc", "bwt", "heldout"]:
            check_interval(f"method {key} {metric}", m[f"{metric}_ci95"], m["per_order"][metric])
        curves = np.array(m["per_order"]["acc_after_each_task"])
        if curves.shape != (len(per_order), n) or not np.allclose(curves[:, -1], per_order):
            sys.exit(f"method {key}: ACC after the last task is not the ACC of each order")
        bwt_curves = np.array(m["per_order"]["bwt_after_each_task"])
        if not np.allclose(bwt_curves[:, -1], m["per_order"]["bwt"]) or not np.allclose(bwt_curves[:, 0], 0):
            sys.exit(f"method {key}: BWT after each task does not end at each order's BWT")
        if len(m["seconds_per_task"]) != n or len(m["resident_mb_after_each_task"]) != n:
            sys.exit(f"method {key}: no time or memory for every task")
        for t in range(n):
            c = m["acc_after_each_task"][t]
            low_high = None if c["low"] is None else (c["low"], c["high"])
            check_interval(f"method {key} ACC after task {t + 1}", low_high, curves[:, t])
        # FWT: each task's accuracy just before it is learned, less the base model's, per order.
        if key == "zero_shot" and (abs(m["fwt"]) > 1e-12 or abs(m["bwt"]) > 1e-12):
            sys.exit("zero_shot has non-zero transfer")
        if m["train_s"] < 0 or m["merge_s"] < 0:
            sys.exit(f"method {key}: negative times")
        # Methods merging the LoRA's products B A: the share of the merged update G's factors keep.
        kept = m["rank_kept_after_each_task"]
        if key.endswith("_ba") != bool(kept):
            sys.exit(f"method {key}: rank_kept_after_each_task is {kept}")
        if kept and (len(kept) != n or not all(0 < k <= 1 + 1e-9 for k in kept)):
            sys.exit(f"method {key}: rank_kept_after_each_task {kept} is not a share for every task")
    if "zero_shot" in results["methods"]:
        r = np.array(results["methods"]["zero_shot"]["matrix"])
        expected = np.mean([[zero[t] for t in order] for order in orders], axis=0)
        if not np.allclose(r[-1], expected):
            sys.exit("zero_shot's matrix is not the base model's accuracy per task")
    for pair in results.get("paired", []):
        a, b = results["methods"][pair["method"]], results["methods"][pair["baseline"]]
        for metric in ["acc", "bwt"]:
            difference = np.subtract(a["per_order"][metric], b["per_order"][metric])
            d = pair[f"{metric}_difference"]
            if abs(d["mean"] - difference.mean()) > 1e-9:
                sys.exit(f"{pair['method']} - {pair['baseline']}: {metric} difference {d['mean']}, not {difference.mean()}")
            check_interval(f"{pair['method']} - {pair['baseline']} {metric}", None if d["low"] is None else (d["low"], d["high"]),
                           difference)
            expected = interval(difference)
            resolved = expected is not None and (expected[0] > 0 or expected[1] < 0)
            if pair[f"{metric}_resolved"] != resolved:
                sys.exit(f"{pair['method']} - {pair['baseline']}: {metric} called resolved={pair[f'{metric}_resolved']}")
    if not (run_dir / "report.md").exists():
        sys.exit(f"{run_dir}/report.md is missing")
    return results


def main():
    arguments = sys.argv[1:]
    tolerance = None  # None: the two runs must agree exactly
    if "--tolerance" in arguments:
        i = arguments.index("--tolerance")
        tolerance = float(arguments[i + 1])
        del arguments[i:i + 2]
    first = check(arguments[0])
    print(f"{arguments[0]}: {len(first['methods'])} methods, schema and metrics consistent")
    if len(arguments) > 1:
        second = check(arguments[1])
        if tolerance is None:
            for key, m in first["methods"].items():
                a, b = np.array(m["matrix"]), np.array(second["methods"][key]["matrix"])
                if (not np.array_equal(a, b) or m["per_order"] != second["methods"][key]["per_order"]
                        or m["rank_kept_after_each_task"] != second["methods"][key]["rank_kept_after_each_task"]):
                    sys.exit(f"method {key}: the resumed run's accuracies differ\n{a}\n{b}")
            print("the interrupted and resumed run gave the same accuracies as the uninterrupted one")
            return
        # Runs whose sums were taken in another order (data parallel): the base model's accuracies
        # are the same (its test batches are), and every accuracy is within `tolerance`.
        if first["config"]["zero_shot_per_task"] != second["config"]["zero_shot_per_task"]:
            sys.exit("the two runs' zero-shot accuracies differ")
        largest = 0.0
        for key, m in first["methods"].items():
            a, b = np.array(m["matrix"]), np.array(second["methods"][key]["matrix"])
            largest = max(largest, float(np.abs(a - b).max()))
            for metric in ["acc", "bwt", "heldout"]:
                a, b = np.array(m["per_order"][metric]), np.array(second["methods"][key]["per_order"][metric])
                largest = max(largest, float(np.abs(a - b).max()))
        if largest > tolerance:
            sys.exit(f"the two runs' accuracies differ by up to {largest:.4f}, more than {tolerance}")
        print(f"the two runs' accuracies agree within {largest:.4f} (allowed {tolerance}); zero-shot identical")


if __name__ == "__main__":
    main()
