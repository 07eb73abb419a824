"""alloy-merge against hostile files and sudden death.

  check_merge_reliability.py ALLOY_MERGE WORK_DIR [GROUP]

GROUP is one of (default: all):
  hostile  files built to break a reader (oversized headers, too many tensors, overflowing shapes,
           shard names and symlinks that leave the model folder, duplicate names, deep nesting),
           non-finite merge parameters, non-finite tensor values with and without --check-finite.
           Each must be refused with its exit code, one line naming the culprit, and no output.
  crash    kills alloy-merge (SIGKILL) at many points of a merge: before it writes, once its staging
           folder appears, while a shard is half written, after each shard, while it writes the
           small files, at fractions of the run's duration, right after the folder appears, and
           while it replaces an existing folder. After each kill the output path holds nothing or a
           complete folder, byte for byte the uninterrupted run's (or the replaced one's), and no
           file under a final name is partial. SIGINT and SIGTERM stop it cleanly (exit 130, no
           output, no staging folder).
"""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_alloy_merge as cam  # noqa: E402
import safetensors_numpy as st  # noqa: E402

check = cam.check
EXIT_CONFIG, EXIT_INPUT, EXIT_INTERRUPTED = 3, 4, 130


def raw_safetensors(path, header_text, data=b"", declared=None):
    header = header_text.encode() if isinstance(header_text, str) else header_text
    length = len(header) if declared is None else declared
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", length) + header + data)
    return path


def leftovers(folder):
    return sorted(p for p in os.listdir(folder) if ".alloy-" in p)


def expect_refusal(binary, label, config, out, exit_code, needles, options=()):
    result = cam.run(binary, config, out, *options)
    check(result.returncode == exit_code, "%s: exit %d, expected %d: %s" % (label, result.returncode, exit_code,
                                                                         result.stderr.strip()))
    for needle in needles:
        check(needle in result.stderr, "%s: the message %r does not name %r" % (label, result.stderr.strip(), needle))
    check(result.stderr.count("\n") == 1 and len(result.stderr) < 1000,
          "%s: expected one short line of error, got %d bytes" % (label, len(result.stderr)))
    check(not os.path.exists(out), "%s: an output folder was left" % label)
    check(not leftovers(os.path.dirname(out)), "%s: staging files were left: %s" % (label, leftovers(os.path.dirname(out))))


# ---- hostile inputs ------------------------------------------------------------------------------

def group_hostile(binary, work):
    os.makedirs(work)
    rng = np.random.default_rng(5)
    base, models = cam.make_weights(rng, 2)
    base_path = cam.write_model(os.path.join(work, "base"), base, "F32", "single")
    good = cam.write_model(os.path.join(work, "good"), models[0], "F32", "single")
    cases = []  # (label, model path, exit, needles)

    def hostile_file(name, header_text, data=b"", declared=None):
        return raw_safetensors(os.path.join(work, name + ".safetensors"), header_text, data, declared)

    # Absurd sizes, refused before anything is allocated or read.
    cases.append(("header over the cap", hostile_file("big_header", "{}", declared=100_000_001), EXIT_INPUT,
                  ["big_header.safetensors", "exceeds the limit"]))
    many = "{" + ",".join('"t%d":0' % i for i in range(1_000_001)) + "}"
    cases.append(("tensor count over the cap", hostile_file("many_tensors", many), EXIT_INPUT,
                  ["many_tensors.safetensors", "lists 1000001 tensors", "limit of 1000000"]))
    cases.append(("dimensions whose product overflows",
                  hostile_file("overflow", '{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}',
                               b"\0" * 8), EXIT_INPUT, ["overflow.safetensors", "'w'", "overflow"]))
    cases.append(("offsets past the end of the file",
                  hostile_file("past_end", '{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}', b"\0" * 8),
                  EXIT_INPUT, ["past_end.safetensors", "beyond the data section"]))
    nested = "[" * 200_000 + "]" * 200_000
    cases.append(("a dtype nested 200000 deep",
                  hostile_file("nested", '{"w":{"dtype":%s,"shape":[2],"data_offsets":[0,8]}}' % nested, b"\0" * 8),
                  EXIT_INPUT, ["nested.safetensors", "[[[...]]]"]))
    cases.append(("a duplicate tensor name",
                  hostile_file("duplicate", '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                            '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
                  EXIT_INPUT, ["duplicate.safetensors", "duplicate tensor name 'a'"]))

    # Indexes whose shards leave the model folder, by name or by symlink.
    outside = os.path.join(work, "outside")
    os.makedirs(outside)
    st.write(os.path.join(outside, "secret.safetensors"), [("w", "F32", np.zeros(2, np.float32))], {})

    def sharded(name, weight_map, links=()):
        folder = os.path.join(work, name)
        os.makedirs(folder)
        for link, target in links:
            os.symlink(target, os.path.join(folder, link))
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"weight_map": weight_map}, f)
        return folder

    cases.append(("a shard name climbing out", sharded("climb", {"w": "../outside/secret.safetensors"}), EXIT_INPUT,
                  ["'../outside/secret.safetensors'", "points outside the index's folder"]))
    cases.append(("an absolute shard name", sharded("absolute", {"w": os.path.join(outside, "secret.safetensors")}),
                  EXIT_INPUT, ["points outside the index's folder"]))
    cases.append(("a symlinked shard escaping",
                  sharded("symlink", {"w": "model-00001-of-00001.safetensors"},
                          [("model-00001-of-00001.safetensors", os.path.join(outside, "secret.safetensors"))]),
                  EXIT_INPUT, ["'model-00001-of-00001.safetensors' resolves to", "outside the index's folder"]))
    cases.append(("a symlinked folder escaping", sharded("symlink_dir", {"w": "sub/secret.safetensors"},
                                                         [("sub", outside)]),
                  EXIT_INPUT, ["'sub/secret.safetensors' resolves to", "outside the index's folder"]))
    dup = sharded("dup_shards", {"a": "s1.safetensors", "b": "s2.safetensors"})
    st.write(os.path.join(dup, "s1.safetensors"), [("a", "F32", np.zeros(1, np.float32))], {})
    st.write(os.path.join(dup, "s2.safetensors"), [("a", "F32", np.zeros(1, np.float32)),
                                                   ("b", "F32", np.zeros(1, np.float32))], {})
    cases.append(("a tensor in two shards", dup, EXIT_INPUT, ["s2.safetensors", "'a'"]))

    # A model folder whose config.json (rewritten into the output) nests 100,000 deep.
    deep_config = cam.write_model(os.path.join(work, "deep_config"), models[1], "F32", "single")
    with open(os.path.join(deep_config, "config.json"), "w") as f:
        f.write('{"architectures": ' + "[" * 100_000 + "]" * 100_000 + "}")
    cases.append(("a config.json nested 100000 deep", deep_config, EXIT_INPUT,
                  ["deep_config/config.json", "nested more than 256 levels"]))

    for label, model, exit_code, needles in cases:
        config = cam.write_config(os.path.join(work, "hostile.yml"), "linear", None,
                                  [(model, {"weight": 0.5}), (good, {"weight": 0.5})])
        expect_refusal(binary, label, config, os.path.join(work, "out"), exit_code, needles)

    # Non-finite or absurd merge parameters and configs.
    def config_file(name, text):
        path = os.path.join(work, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    parameter_cases = [
        ("weight .inf", "weight: .inf", "'.inf' is not a finite number"),
        ("weight -.Inf", "weight: -.Inf", "is not a finite number"),
        ("weight 1e999", "weight: 1e999", "'1e999'"),
        ("weight .nan in a gradient", "weight: [0.5, .nan]", "weight[1]"),
        ("density NaN in a filter", "weight: 1\n      density: [{filter: mlp, value: .NaN}, {value: 0.5}]",
         "density"),
    ]
    for label, parameters, needle in parameter_cases:
        config = config_file("nonfinite.yml", "merge_method: ties\nbase_model: %s\nmodels:\n  - model: %s\n"
                                              "    parameters:\n      %s\n" % (base_path, good, parameters))
        expect_refusal(binary, label, config, os.path.join(work, "out"), EXIT_CONFIG, [needle])
    big = config_file("big.yml", "merge_method: linear\n" + "#" * (1 << 20) + "\n")
    expect_refusal(binary, "a config over 1 MiB", big, os.path.join(work, "out"), EXIT_CONFIG, ["too large"])
    expect_refusal(binary, "a config that is a folder", work, os.path.join(work, "out"), EXIT_CONFIG, ["is a folder"])

    # Non-finite values inside tensors (docs/reliability.md). Without --check-finite every method
    # merges; what a NaN or infinity does is the method's arithmetic, but it never reaches another
    # tensor, and the element-wise sums keep it in its element. --check-finite refuses it, naming
    # model, tensor and element, and --dry-run --check-finite finds it without merging.
    target = "model.layers.1.mlp.up_proj.weight"
    flat = 3 * HIDDEN + 5
    out = os.path.join(work, "out")
    merged_cases = 0
    for bad in (np.nan, np.inf):
        poisoned = [dict(m) for m in models + [cam.make_weights(rng, 1)[1][0]]]
        w = poisoned[1][target].copy()
        w[3, 5] = bad
        poisoned[1][target] = w
        paths = [cam.write_model(os.path.join(work, "poisoned_%s_%d" % (bad, i)), poisoned[i], "F32", "single")
                 for i in range(3)]
        for method, needs_base, top, per_model in cam.method_cases():
            entries = list(zip(paths[:len(per_model)] if len(per_model) > 1 else paths[1:2], per_model))
            config = cam.write_config(os.path.join(work, "poisoned.yml"), method, base_path if needs_base else None,
                                      entries, top)
            label = "%s in a model, %s %s" % (bad, method, top)
            result = cam.run(binary, config, out, "--quiet")
            check(result.returncode == 0, "%s without --check-finite: exit %d: %s" % (label, result.returncode,
                                                                                    result.stderr))
            if result.returncode != 0:
                continue
            merged_cases += 1
            merged = {name: array for name, (_, array) in cam.read_output(out).items()}
            spread = [n for n, t in merged.items() if n != target and t.dtype.kind == "f" and not np.isfinite(t).all()]
            check(not spread, "%s: the non-finite value reached other tensors: %s" % (label, spread))
            if method in ("linear", "task_arithmetic", "slerp"):
                values = merged[target].ravel()
                check(not np.isfinite(values[flat]) and np.isfinite(np.delete(values, flat)).all(),
                      "%s: expected exactly element [3, 5] to be non-finite" % label)
            shutil.rmtree(out)
        config = cam.write_config(os.path.join(work, "poisoned.yml"), "ties", base_path,
                                  [(paths[0], {"weight": 0.5, "density": 0.5}), (paths[1], {"weight": 0.5, "density": 0.5})])
        shown = "NaN" if np.isnan(bad) else "+inf"
        for options in (["--check-finite"], ["--dry-run", "--check-finite"]):
            expect_refusal(binary, "%s with %s" % (shown, " ".join(options)), config, out, EXIT_INPUT,
                           ["model " + paths[1], "'%s'" % target, "%s at element [3, 5]" % shown,
                            "flat index %d" % flat], options)
    result = cam.run(binary, cam.write_config(os.path.join(work, "clean.yml"), "ties", base_path,
                                              [(good, {"weight": 0.5, "density": 0.5})]),
                     out, "--dry-run", "--check-finite")
    check(result.returncode == 0 and "every input tensor is finite" in result.stdout,
          "--dry-run --check-finite on finite models: exit %d: %s" % (result.returncode, result.stderr))
    check(not os.path.exists(out), "--dry-run --check-finite wrote something")

    # Finite inputs whose merge overflows float16: written as inf by default, refused when checked.
    huge = {name: np.full_like(w, 60000.0) for name, w in base.items()}
    huge_path = cam.write_model(os.path.join(work, "huge"), huge, "F16", "single")
    config = cam.write_config(os.path.join(work, "overflow.yml"), "linear", None,
                              [(huge_path, {"weight": 1.0}), (huge_path + "/model.safetensors", {"weight": 1.0})],
                              {"normalize": 0})
    expect_refusal(binary, "a float16 merge that overflows", config, out, EXIT_INPUT,
                   ["the merged result in F16 (from finite inputs)", "+inf at element"],
                   ["--check-finite"])
    print("hostile: %d hostile files, %d parameter and config cases, %d merges of a NaN or an infinity, "
          "--check-finite on inputs and outputs" % (len(cases), len(parameter_cases) + 2, merged_cases))


HIDDEN = cam.HIDDEN


# ---- crash safety ----------------------------------------------------------------------------------

def crash_models(work):
    """Three f32 models of 48 tensors x 2 MiB (96 MiB each), so that a merge takes long enough to kill."""
    rng = np.random.default_rng(3)
    shapes = [("layers.%02d.weight" % i, (512, 1024)) for i in range(48)]
    paths = []
    for m in range(3):
        folder = os.path.join(work, "m%d" % m)
        os.makedirs(folder)
        tensors = [(name, "F32", rng.standard_normal(shape, dtype=np.float32)) for name, shape in shapes]
        st.write(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"})
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"architectures": ["Toy"], "torch_dtype": "float32"}, f)
        paths.append(folder)
    return paths


def folder_bytes(folder):
    contents = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            contents[name] = f.read()
    return contents


def staging_state(parent, out_name):
    """A short description of what the merge has written so far (for the kill points)."""
    entries = os.listdir(parent)
    state = {"<replaced>"} if any(p.startswith("." + out_name + ".alloy-replaced") for p in entries) else set()
    staging = [p for p in entries if p.startswith("." + out_name + ".alloy-staging")]
    if staging:
        try:
            state |= set(os.listdir(os.path.join(parent, staging[0]))) | {"<staging>"}
        except FileNotFoundError:
            state.add("<renamed>")
    return state


def kill_at(binary, config, out, condition, options=(), timeout=120):
    """Starts a merge and SIGKILLs it as soon as `condition(state, elapsed)` holds. Returns what it saw
    when it killed (or None if the merge finished first)."""
    parent, name = os.path.split(out)
    process = subprocess.Popen([binary, config, out, "--quiet", "--threads", "1", "--shard-size", "20MB", *options],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.monotonic()
    seen = None
    while process.poll() is None and time.monotonic() - start < timeout:
        state = staging_state(parent, name)
        if os.path.exists(out):
            state.add("<final>")
        if condition(state, time.monotonic() - start):
            process.send_signal(signal.SIGKILL)
            seen = state
            break
    process.wait()
    process.stderr.close()
    return seen


def group_crash(binary, work):
    os.makedirs(work)
    models = crash_models(work)
    config = cam.write_config(os.path.join(work, "ties.yml"), "ties", models[0],
                              [(models[1], {"weight": 0.6, "density": 0.5}), (models[2], {"weight": 0.4, "density": 0.5})])
    previous_config = cam.write_config(os.path.join(work, "linear.yml"), "linear", None,
                                       [(models[1], {"weight": 0.5}), (models[2], {"weight": 0.5})])
    reference = os.path.join(work, "reference")
    start = time.monotonic()
    result = cam.run(binary, config, reference, "--quiet", "--threads", "1", "--shard-size", "20MB")
    duration = time.monotonic() - start
    check(result.returncode == 0, "crash: the uninterrupted merge failed: %s" % result.stderr)
    expected = folder_bytes(reference)
    shards = sorted(n for n in expected if n.endswith(".safetensors"))
    check(len(shards) >= 4, "crash: expected several shards, got %s" % shards)
    previous = os.path.join(work, "previous")
    check(cam.run(binary, previous_config, previous, "--quiet").returncode == 0, "crash: the linear merge failed")
    replaced = folder_bytes(previous)

    def saw(name):
        return lambda state, elapsed: name in state

    def partial_shard(state, elapsed):
        return any(".alloy-partial" in n for n in state)

    points = [
        ("at once", lambda state, elapsed: True),
        ("when the staging folder appears", saw("<staging>")),
        ("while the first shard is half written", partial_shard),
        ("after shard 1", saw(shards[0])),
        ("after shard 2", saw(shards[1])),
        ("after the last shard", saw(shards[-1])),
        ("while writing the small files", saw("README.md")),
        ("when the folder appears", saw("<final>")),
    ] + [("at %d%% of the run" % (100 * f), (lambda f: lambda state, elapsed: elapsed >= f * duration)(f))
         for f in (0.1, 0.3, 0.5, 0.7, 0.9)]

    killed = complete = 0
    out = os.path.join(work, "out")
    for label, condition in points:
        seen = kill_at(binary, config, out, condition)
        killed += seen is not None
        if os.path.exists(out):
            complete += 1
            check(folder_bytes(out) == expected, "crash %s: the output folder differs from the uninterrupted run's" % label)
            shutil.rmtree(out)
        stray = leftovers(work)
        check(all(p.startswith(".out.alloy-staging-") for p in stray),
              "crash %s: unexpected files left: %s" % (label, stray))
        for p in stray:
            shutil.rmtree(os.path.join(work, p))
    check(killed >= len(points) - 2, "crash: only %d of %d kills happened before the merge ended" % (killed, len(points)))

    # Replacing an existing folder: at every moment the path holds the old folder, the new one,
    # or (between the two renames) nothing, with the old one kept aside under a hidden name.
    replace_points = [
        ("replacing, after shard 1", saw(shards[0])),
        ("replacing, while writing the small files", saw("README.md")),
        ("replacing, when the old folder is moved aside", saw("<replaced>")),
        ("replacing, at 95% of the run", lambda state, elapsed: elapsed >= 0.95 * duration),
    ]
    outcomes = []
    for label, condition in replace_points:
        shutil.copytree(previous, out)
        kill_at(binary, config, out, condition, ["--allow-overwrite"])
        if os.path.exists(out):
            contents = folder_bytes(out)
            check(contents in (expected, replaced), "crash %s: the output folder is neither the old nor the new" % label)
            outcomes.append("new" if contents == expected else "old")
        else:
            outcomes.append("old kept aside")
            aside = [p for p in leftovers(work) if p.startswith(".out.alloy-replaced-")]
            check(len(aside) == 1 and folder_bytes(os.path.join(work, aside[0])) == replaced,
                  "crash %s: the path is empty and the old folder is not kept aside" % label)
        shutil.rmtree(out, ignore_errors=True)
        for p in leftovers(work):
            shutil.rmtree(os.path.join(work, p))

    # A clean stop: SIGINT or SIGTERM after the first shard leaves nothing at all.
    for sig in (signal.SIGINT, signal.SIGTERM):
        process = subprocess.Popen([binary, config, out, "--quiet", "--threads", "1", "--shard-size", "20MB"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while process.poll() is None and shards[0] not in staging_state(work, "out"):
            pass
        process.send_signal(sig)
        _, stderr = process.communicate()
        name = signal.Signals(sig).name
        check(process.returncode == EXIT_INTERRUPTED, "%s: exit %d, expected 130: %s" % (name, process.returncode, stderr))
        check("interrupted" in stderr, "%s: the message does not say interrupted: %r" % (name, stderr))
        check(not os.path.exists(out) and not leftovers(work), "%s: output or staging left: %s" % (name, leftovers(work)))
    print("crash: %d SIGKILLs (%d left a complete folder, the rest none), %d while replacing a folder (%s), "
          "SIGINT and SIGTERM; uninterrupted run %.2f s" % (killed, complete, len(replace_points), ", ".join(outcomes),
                                                             duration))


def main():
    binary, work = sys.argv[1], sys.argv[2]
    groups = {"hostile": group_hostile, "crash": group_crash}
    chosen = sys.argv[3:] or list(groups)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    for name in chosen:
        groups[name](binary, os.path.join(work, name))
    print("%d checks, %d failures" % (cam.checks, len(cam.failures)))
    sys.exit(1 if cam.failures else 0)


if __name__ == "__main__":
    main()
