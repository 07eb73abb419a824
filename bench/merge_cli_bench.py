"""alloy-merge on models of a realistic size: time, peak resident memory, and the I/O floor.

  merge_cli_bench.py ALLOY_MERGE WORK_DIR [--gigabytes 1.1] [--dtype BF16] [--methods linear,ties|all]
                    [--models 2] [--threads N] [--device cpu|cuda] [--python] [--no-floor] [--repeat 3]
                    [--csv FILE]

Writes a base and --models fine-tuned variants (two by default), each a sharded folder of about --gigabytes GB shaped
like a Llama layer stack (4096-wide projections, a 32000 x 4096 embedding), streaming each file to
disk; then runs alloy-merge on each method (`all`: every method of the registry, configured as
METHODS says) under /usr/bin/time and prints wall time, peak RSS (largest resident set of the
process), the ratio of peak RSS to the largest tensor times the number of inputs, and the ratio to
the I/O floor timed alternately with it in the same run (medians of --repeat runs, 3 by default): `cat` reading the same input files, then the
output's bytes written and fsynced (io_floor). With --python it also times the same merge done in
Python the way mergekit does it (bench/torch_baseline.py's PyTorch eager merge, tensor by tensor,
reading and writing the same safetensors files). Inputs are read from the page cache when the
machine has room for them (it usually does right after writing); the figures say so.
"""

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_numpy as st  # noqa: E402

WIDTH = 4096


def tensors_for(gigabytes, element_bytes):
    """(name, shape) of a Llama-like stack totalling about `gigabytes`."""
    shapes = [("model.embed_tokens.weight", (32000, WIDTH))]
    total = 32000 * WIDTH * element_bytes
    layer = 0
    while total < gigabytes * 1e9:
        p = "model.layers.%d." % layer
        for name, shape in ((p + "self_attn.q_proj.weight", (WIDTH, WIDTH)), (p + "self_attn.o_proj.weight", (WIDTH, WIDTH)),
                            (p + "mlp.up_proj.weight", (11008, WIDTH)), (p + "input_layernorm.weight", (WIDTH,))):
            shapes.append((name, shape))
            total += int(np.prod(shape)) * element_bytes
        layer += 1
    shapes.append(("model.norm.weight", (WIDTH,)))
    return shapes


def write_sharded(folder, shapes, dtype_name, values_for, shard_bytes=2_000_000_000):
    os.makedirs(folder, exist_ok=True)
    element = st.DTYPES[dtype_name].itemsize
    shards, current, size = [], [], 0
    for name, shape in shapes:
        nbytes = int(np.prod(shape)) * element
        if current and size + nbytes > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        file_name = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in shard:
            nbytes = int(np.prod(shape)) * element
            header[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = file_name
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        with open(os.path.join(folder, file_name), "wb") as out:
            out.write(struct.pack("<Q", len(text)) + text)
            for name, shape in shard:
                values = values_for(name, shape)
                out.write((st.bf16_bits_from_f32(values) if dtype_name == "BF16" else values.astype(st.DTYPES[dtype_name])).tobytes())
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "torch_dtype": "bfloat16"}, f)


def fine_tuned_names(count):
    """The fine-tuned models' folder names: math and code (the original two), then ft3, ft4, ..."""
    return ["math", "code"][:count] + ["ft%d" % i for i in range(3, count + 1)]


def python_torch_version():
    import torch
    return torch.__version__


def python_merge(method, work, out):
    """The merge as a Python merger does it: each shard's tensors loaded, merged with PyTorch eager
    operations (torch_baseline.merge, mergekit's math, in bf16 as mergekit computes), written."""
    import torch
    import torch_baseline
    torch.set_num_threads(os.cpu_count())
    started = time.time()
    with open(os.path.join(work, "base", "model.safetensors.index.json")) as f:
        weight_map = json.load(f)["weight_map"]
    os.makedirs(out)
    names = ["base"] + fine_tuned_names(2)
    for shard in sorted(set(weight_map.values())):
        loaded = [st.read(os.path.join(work, name, shard))[0] for name in names]
        merged = []
        for tensor_name, (dtype_name, bits) in loaded[0].items():
            def as_torch(entry):
                return torch.from_numpy(entry[1].astype(np.int16)).view(torch.bfloat16)
            base, math, code = (as_torch(part[tensor_name]) for part in loaded)
            with torch.no_grad():
                if method == "linear":
                    result = torch_baseline.merge("linear", base, [base, math, code])
                else:
                    result = torch_baseline.merge(method, base, [math, code], density=0.5)
            merged.append((tensor_name, dtype_name, result.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)))
        st.write(os.path.join(out, shard), merged)
    return time.time() - started


# Each method as its users configure it: (uses a base, which fine-tuned models, top-level
# parameters, per-model parameters). "all" merges every fine-tuned model, "one" the first only
# (methods of the base and one model), "two" the first two (NuSLERP's pair).
METHODS = {
    "linear": (False, "all", {}, {"weight": 1.0}),
    "task_arithmetic": (True, "all", {}, {"weight": 0.5}),
    "ties": (True, "all", {}, {"weight": 0.5, "density": 0.5}),
    "dare_linear": (True, "all", {}, {"weight": 0.5, "density": 0.5}),
    "dare_ties": (True, "all", {}, {"weight": 0.5, "density": 0.5}),
    "breadcrumbs": (True, "all", {}, {"weight": 0.5, "density": 0.8, "gamma": 0.01}),
    "breadcrumbs_ties": (True, "all", {}, {"weight": 0.5, "density": 0.8, "gamma": 0.01}),
    "della": (True, "all", {}, {"weight": 0.5, "density": 0.5, "epsilon": 0.1}),
    "della_linear": (True, "all", {}, {"weight": 0.5, "density": 0.5, "epsilon": 0.1}),
    "magmax": (True, "all", {}, {}),
    "slerp": (True, "one", {"t": 0.5}, {}),
    "nearswap": (True, "one", {"t": 0.001}, {}),
    "arcee_fusion": (True, "one", {}, {}),
    "nuslerp": (True, "two", {}, {"weight": 0.5}),
    "multislerp": (True, "all", {}, {"weight": 1.0}),
    "karcher": (False, "all", {}, {}),
    "model_stock": (True, "all", {}, {}),
    "sce": (True, "all", {"select_topk": 0.5}, {}),
    "ram": (True, "all", {}, {}),
    "ramplus_tl": (True, "all", {}, {}),
    "passthrough": (False, "one", {}, {}),
}


def write_method_config(work, method, fine_tuned):
    """Writes WORK/METHOD.yml; returns its path and the model folders it reads."""
    uses_base, which, top, per_model = METHODS[method]
    chosen = {"all": fine_tuned, "one": fine_tuned[:1], "two": fine_tuned[:2]}[which]
    listed = chosen if uses_base else (["base"] + chosen if method != "passthrough" else chosen)
    config = os.path.join(work, method + ".yml")
    with open(config, "w") as f:
        f.write("merge_method: %s\n" % method)
        if uses_base:
            f.write("base_model: %s\n" % os.path.join(work, "base"))
        if top:
            f.write("parameters: {%s}\n" % ", ".join("%s: %g" % kv for kv in top.items()))
        f.write("models:\n")
        for model in listed:
            f.write("  - model: %s\n" % os.path.join(work, model))
            values = dict(per_model)
            if method == "linear":
                values["weight"] = 1.0 / len(listed)
            if values:
                f.write("    parameters: {%s}\n" % ", ".join("%s: %g" % kv for kv in values.items()))
    folders = (["base"] if uses_base else []) + listed
    return config, [os.path.join(work, m) for m in folders]


def io_floor(work, folders, output_bytes):
    """What no merge of these inputs can beat: `cat` reading every input file once, then the
    output's byte count written to a new file and fsynced (alloy-merge fsyncs each shard), timed
    as one command in this run. Seconds."""
    files = []
    for folder in folders:
        files += sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".safetensors"))
    target = os.path.join(work, "floor.bin")
    megabytes = max(1, int(round(output_bytes / (1 << 20))))
    script = 'cat "$@" > /dev/null && dd if=/dev/zero of=%s bs=1M count=%d conv=fsync status=none' % (target, megabytes)
    began = time.time()
    subprocess.run(["sh", "-c", script, "floor"] + files, check=True)
    seconds = time.time() - began
    os.remove(target)
    return seconds


def time_merge(command):
    """alloy-merge's wall seconds and peak RSS (kB; 0 where GNU time is missing)."""
    if os.path.exists("/usr/bin/time"):
        # GNU time forks the merge from a small process, so its peak RSS is alloy-merge's own.
        result = subprocess.run(["/usr/bin/time", "-v"] + command, capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr)
            sys.exit(1)
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
        wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", result.stderr).group(1)
        parts = [float(p) for p in wall.split(":")]
        return parts[-1] + 60 * parts[-2] + (3600 * parts[-3] if len(parts) > 2 else 0), rss_kb
    # Without GNU time (GPU images): wall time only; a child forked from this Python process
    # inherits its resident pages, so wait4's peak RSS would not be alloy-merge's.
    began = time.time()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.time() - began
    if result.returncode != 0:
        print(result.stderr)
        sys.exit(1)
    return seconds, 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("work")
    parser.add_argument("--gigabytes", type=float, default=1.1)
    parser.add_argument("--dtype", default="BF16")
    parser.add_argument("--methods", default="linear,task_arithmetic,ties,dare_ties",
                        help="comma-separated config names, or all (every method of the registry)")
    parser.add_argument("--threads", default="")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--python", action="store_true")
    parser.add_argument("--models", type=int, default=2, help="fine-tuned models merged with the base")
    parser.add_argument("--no-floor", action="store_true", help="do not time the I/O floor beside each merge")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the floor and of each merge (medians reported)")
    parser.add_argument("--csv", help="append one line per method: method,models,gigabytes,seconds,peak_rss_mb,floor_seconds,dtype")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.python and (args.dtype != "BF16" or args.models != 2):
        parser.error("--python merges two BF16 models only")
    os.makedirs(args.work, exist_ok=True)
    element = st.DTYPES[args.dtype].itemsize
    shapes = tensors_for(args.gigabytes, element)
    largest = max(int(np.prod(s)) for _, s in shapes) * element
    total = sum(int(np.prod(s)) for _, s in shapes) * element
    fine_tuned = fine_tuned_names(args.models)
    models = ["base"] + fine_tuned
    started = time.time()
    for index, model in enumerate(models):
        folder = os.path.join(args.work, model)
        if os.path.exists(os.path.join(folder, "model.safetensors.index.json")):
            continue
        def values_for(name, shape, index=index):
            rng = np.random.default_rng(abs(hash((name, 0))) % (1 << 32))
            base = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            if index == 0:
                return base
            noise = np.random.default_rng(index * 7919 + len(name)).standard_normal(shape, dtype=np.float32)
            return base + noise * np.float32(0.002)
        write_sharded(folder, shapes, args.dtype, values_for)
    print("models: %d x %.2f GB (%s, %d tensors, largest %.0f MB), written in %.0f s" %
          (len(models), total / 1e9, args.dtype, len(shapes), largest / 1e6, time.time() - started))
    methods = list(METHODS) if args.methods == "all" else args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error("unknown methods %s; known: %s" % (unknown, ", ".join(METHODS)))
    for method in methods:
        config, inputs = write_method_config(args.work, method, fine_tuned)
        out = os.path.join(args.work, "out_" + method)
        command = [args.binary, config, out, "--quiet", "--device", args.device]
        if args.threads:
            command += ["--threads", args.threads]
        # Floor and merge alternate, --repeat times each: the disk's writeback makes single runs
        # vary by 2x here; the medians are reported.
        floors, runs = [], []
        for _ in range(args.repeat):
            if not args.no_floor:
                floors.append(io_floor(args.work, inputs, total))
            subprocess.run(["rm", "-rf", out], check=True)
            runs.append(time_merge(command))
        floor = statistics.median(floors) if floors else None
        seconds = statistics.median(r[0] for r in runs)
        rss_kb = max(r[1] for r in runs)
        alloy_seconds = seconds
        count = len(inputs)
        read = total * count
        versus = ("  %.2fx the I/O floor (%.2f s; fastest runs %.2f s / %.2f s)" %
                  (seconds / floor, floor, min(r[0] for r in runs), min(floors)) if floor else "")
        print("%-16s %6.2f s  read %.2f GB + write %.2f GB  %.2f GB/s  peak RSS %.0f MB = %.2f x (largest tensor x %d inputs)%s" %
              (method, seconds, read / 1e9, total / 1e9, (read + total) / 1e9 / seconds, rss_kb / 1e3,
               rss_kb * 1e3 / (largest * count), count, versus))
        if args.csv:
            with open(args.csv, "a") as f:
                f.write("%s,%d,%.3f,%.2f,%.0f,%s,%s\n" % (method, args.models, total / 1e9, seconds, rss_kb / 1e3,
                                                         "%.2f" % floor if floor else "", args.dtype))
        subprocess.run(["rm", "-rf", out], check=True)
        if args.python:
            seconds = python_merge(method, args.work, out)
            print("%-16s %6.1f s  Python (PyTorch %s eager, mergekit's operations); alloy-merge is %.1fx faster" %
                  (method + " (Python)", seconds, python_torch_version(), seconds / alloy_seconds))
            subprocess.run(["rm", "-rf", out], check=True)


if __name__ == "__main__":
    main()
