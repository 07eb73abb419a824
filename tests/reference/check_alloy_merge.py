"""End-to-end tests of the alloy-merge program against NumPy.

  check_alloy_merge.py ALLOY_MERGE WORK_DIR [GROUP]

GROUP is one of: methods, files, lora, errors, slices, modules, vocab, tokenizer, gpu (default: all but gpu). Builds small Llama-shaped models
(f32, f16, bf16; single files, sharded folders with an index, bare .safetensors files, PEFT LoRA
adapters), writes mergekit YAML configs, runs alloy-merge, and compares every output tensor with
merge_reference.py's NumPy implementation of the method, with parameters evaluated per tensor as
mergekit does (gradients over layer depth, filters). Error cases check the documented exit code,
a message naming the culprit, and that no output folder is left.
"""

import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import merge_reference as ref  # noqa: E402
import safetensors_numpy as st  # noqa: E402

EXIT_USAGE, EXIT_CONFIG, EXIT_INPUT, EXIT_OUTPUT, EXIT_DEVICE = 2, 3, 4, 5, 6
LAYERS = 4
HIDDEN = 16
failures = []
checks = 0


def check(condition, message):
    global checks
    checks += 1
    if not condition:
        failures.append(message)
        print("FAIL: " + message)


# ---- models -------------------------------------------------------------------------------------

def architecture():
    shapes = [("model.embed_tokens.weight", (64, HIDDEN))]
    for i in range(LAYERS):
        p = "model.layers.%d." % i
        shapes += [(p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "self_attn.v_proj.weight", (HIDDEN, HIDDEN)),
                   (p + "mlp.up_proj.weight", (32, HIDDEN)), (p + "mlp.down_proj.weight", (HIDDEN, 32)),
                   (p + "input_layernorm.weight", (HIDDEN,))]
    shapes += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (64, HIDDEN))]
    return shapes


def make_weights(rng, count):
    """base and `count` fine-tuned variants, float64."""
    base = {name: rng.normal(0, 0.5, size=shape) for name, shape in architecture()}
    models = []
    for _ in range(count):
        scale = rng.choice([0.5, 1.0, 2.0])
        models.append({name: w + rng.normal(0, 0.05, size=w.shape) * scale for name, w in base.items()})
    return base, models


def stored(values, dtype_name):
    """(storage array, float32 values as alloy reads them)"""
    return ref.quantize(values, dtype_name)


def write_model(path, weights, dtype_name, layout, extra_files=True, position_ids=None):
    """layout: 'single' (folder/model.safetensors), 'sharded' (folder with index), 'file' (bare file)."""
    tensors = [(name, dtype_name, stored(w, dtype_name)[0]) for name, w in weights.items()]
    ids = np.arange(8, dtype=np.int64).reshape(1, 8) if position_ids is None else position_ids
    tensors.append(("model.rotary_emb.position_ids", "I64", ids))
    if layout == "file":
        st.write(path, tensors, {"format": "pt"})
        return path
    os.makedirs(path, exist_ok=True)
    if layout == "single":
        st.write(os.path.join(path, "model.safetensors"), tensors, {"format": "pt"})
    else:
        shards = [tensors[:9], tensors[9:20], tensors[20:]]
        weight_map = {}
        for i, shard in enumerate(shards):
            name = "model-%05d-of-%05d.safetensors" % (i + 1, len(shards))
            st.write(os.path.join(path, name), shard, {"format": "pt"})
            weight_map.update({t[0]: name for t in shard})
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    if extra_files:
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN, "torch_dtype": "float32"}, f)
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": 128}, f)
        with open(os.path.join(path, "generation_config.json"), "w") as f:
            json.dump({"max_new_tokens": 7}, f)
    return path


def tokenizer_json(tokens, added=(), model_type="BPE"):
    """A Hugging Face fast tokenizer's tokenizer.json: `tokens` in id order, then `added` tokens
    (content, special) with the next ids."""
    vocab = {t: i for i, t in enumerate(tokens)}
    added_tokens = [{"id": len(tokens) + k, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": not special, "special": special} for k, (c, special) in enumerate(added)]
    merges = ["%s %s" % (a, b) for a, b in zip(tokens[::2], tokens[1::2]) if a + b in vocab]
    return json.dumps({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens,
                       "normalizer": None, "pre_tokenizer": None, "post_processor": None, "decoder": None,
                       "model": {"type": model_type, "dropout": None, "unk_token": None, "vocab": vocab,
                                 "merges": merges}}, indent=2)


def read_output(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        for shard in sorted(set(weight_map.values())):
            part, _ = st.read(os.path.join(folder, shard))
            for name in part:
                check(weight_map.get(name) == shard, "%s: index names %s for %s" % (folder, weight_map.get(name), name))
            tensors.update(part)
        check(set(weight_map) == set(tensors), "%s: index and shards hold different tensors" % folder)
    else:
        tensors, _ = st.read(os.path.join(folder, "model.safetensors"))
    return tensors


# ---- mergekit's parameter evaluation, re-implemented --------------------------------------------

def layer_depth(name):
    # mergekit's plan.py: layer i of n at i / (n - 1); the weights before and after the stack
    # (embeddings, final norm, output head) at t = 0 (plan_module).
    for part in name.split(".")[:-1]:
        if part.isdigit():
            return int(part) / (LAYERS - 1)
    return 0.0


def evaluate(setting, name, t):
    if isinstance(setting, (int, float, bool)):
        return float(setting)
    if isinstance(setting, dict):
        setting = [setting]
    if all(isinstance(v, (int, float)) for v in setting):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    for cond in setting:
        f = cond.get("filter")
        if f is None or f == "*" or f in name:
            return evaluate(cond["value"], name, t)
    return None


def yaml_value(value):
    return json.dumps(value)  # JSON is YAML


def write_config(path, method, base, models, parameters=None, extra=""):
    lines = ["merge_method: %s" % method]
    if base:
        lines.append("base_model: %s" % base)
    lines.append("models:")
    for model, params in models:
        lines.append("  - model: %s" % model)
        if params:
            lines.append("    parameters:")
            for k, v in params.items():
                lines.append("      %s: %s" % (k, yaml_value(v)))
    if parameters:
        lines.append("parameters:")
        for k, v in parameters.items():
            lines.append("  %s: %s" % (k, yaml_value(v)))
    text = "\n".join(lines) + "\n" + extra
    with open(path, "w") as f:
        f.write(text)
    return path


def run(binary, config, output, *options, fsize_limit=None, timeout=None):
    def limit():
        if fsize_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
    return subprocess.run([binary, config, output, *options], capture_output=True, text=True,
                          preexec_fn=limit if fsize_limit is not None else None, timeout=timeout)


def tree_digest(path):
    """Every file under `path` (or `path` itself) with its size and contents' hash."""
    import hashlib
    files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    digest = {}
    for name in sorted(files):
        with open(name, "rb") as f:
            digest[name] = hashlib.sha256(f.read()).hexdigest()
    return digest


def expected_tensor(method, name, base32, models32, top, per_model):
    t = layer_depth(name)
    top_values = {k: evaluate(v, name, t) for k, v in (top or {}).items()}
    # Per-model keys (mergekit's tensor parameters); RAM's epsilon is the method's.
    model_keys = ("weight", "density", "gamma", "scale") + (() if method in ("ram", "ramplus_tl") else ("epsilon",))
    params = []
    for p in per_model:
        resolved = {}
        for key in model_keys:
            if p and key in p and evaluate(p[key], name, t) is not None:
                resolved[key] = evaluate(p[key], name, t)
            elif key in top_values and top_values[key] is not None:
                resolved[key] = top_values[key]
        params.append(resolved)
    method_top = {k: v for k, v in top_values.items() if k not in model_keys}
    case = {"method": method, "parameters": method_top, "model_parameters": params, "tensor": name}
    return ref.expected(case, base32, models32)


def tolerance(dtype_name):
    return {"F32": (2e-6, 1e-5), "F16": (2e-4, 2 ** -10), "BF16": (2e-3, 2 ** -7)}[dtype_name]


def compare(label, output_dir, method, base, models, top, per_model, in_dtypes, out_dtype):
    """base/models: float64 weight dicts; in_dtypes: storage dtype of base then each model."""
    out = read_output(output_dir)
    quant = lambda w, d: {n: stored(v, d)[1] for n, v in w.items()}
    base32 = quant(base, in_dtypes[0]) if base is not None else None
    models32 = [quant(m, d) for m, d in zip(models, in_dtypes[1:])]
    atol, rtol = tolerance(out_dtype)
    worst = 0.0
    for name, _ in architecture():
        if name not in out:
            check(False, "%s: output lacks %s" % (label, name))
            continue
        dtype_name, array = out[name]
        check(dtype_name == out_dtype, "%s: %s is %s, expected %s" % (label, name, dtype_name, out_dtype))
        got = st.as_float64(dtype_name, array)
        want = expected_tensor(method, name, base32[name] if base32 else None, [m[name] for m in models32], top, per_model)
        known = ~np.isnan(want)
        error = np.abs(got - want)[known]
        allowed = (atol + rtol * np.abs(want))[known]
        if error.size and (error > allowed).any():
            i = int(np.argmax(error - allowed))
            check(False, "%s: %s differs from NumPy by %.3g (allowed %.3g)" % (label, name, error[i], allowed[i]))
        worst = max(worst, float(error.max()) if error.size else 0.0)
    ids = out.get("model.rotary_emb.position_ids")
    check(ids is not None and ids[0] == "I64" and (ids[1] == np.arange(8).reshape(1, 8)).all(),
          "%s: the integer buffer is not copied unchanged" % label)
    check(not any(name not in dict(architecture()) and name != "model.rotary_emb.position_ids" for name in out),
          "%s: output holds tensors the inputs do not" % label)
    return worst


def check_config_refusals(binary, folder, group, cases):
    """Each (label, config text, needle): exit 3 (config), the needle in the message, no output."""
    for label, text, needle in cases:
        config = os.path.join(folder, "bad.yml")
        with open(config, "w") as f:
            f.write(text)
        out = os.path.join(folder, "out_bad")
        result = run(binary, config, out)
        check(result.returncode == EXIT_CONFIG and needle in result.stderr,
              "%s %s: exit %d, %r" % (group, label, result.returncode, result.stderr.strip()))
        check(not os.path.exists(out), "%s %s: an output was left" % (group, label))
        shutil.rmtree(out, ignore_errors=True)


# ---- groups ---------------------------------------------------------------------------------------

def method_cases():
    w = [0.6, 0.3, 0.9]
    gradient = [0.2, 1.0, 0.5]
    cond = [{"filter": "self_attn", "value": 0.7}, {"filter": "mlp", "value": [0.3, 0.9]}, {"value": 0.5}]
    return [
        ("linear", False, {}, [{"weight": w[0]}, {"weight": gradient}, {"weight": cond}]),
        ("linear", False, {"normalize": False}, [{"weight": w[0]}, {"weight": w[1]}]),
        ("task_arithmetic", True, {"lambda": 0.8}, [{"weight": w[0]}, {"weight": w[1]}, {"weight": gradient}]),
        ("ties", True, {"normalize": True, "int8_mask": True},
         [{"weight": 1.0, "density": [1, 0.7, 0.1]}, {"weight": [0, 0.3, 0.7, 1], "density": 0.5},
          {"weight": [{"filter": "mlp", "value": 0.5}, {"value": 0}], "density": 0.33}]),
        ("dare_ties", True, {"seed": 3}, [{"weight": w[0], "density": 0.5}, {"weight": w[1], "density": 0.7}]),
        ("dare_linear", True, {"rescale": False, "seed": 9}, [{"weight": w[0], "density": 0.6}, {"weight": w[2], "density": 0.4}]),
        ("breadcrumbs", True, {}, [{"weight": w[0], "density": 0.8, "gamma": 0.05}, {"weight": w[1], "density": 0.7, "gamma": 0.1}]),
        ("breadcrumbs_ties", True, {"gamma": 0.02}, [{"weight": w[0], "density": 0.6}, {"weight": w[1], "density": 0.6}]),
        ("della", True, {"epsilon": 0.1, "lambda": 0.9}, [{"weight": w[0], "density": 0.5}, {"weight": w[1], "density": 0.6}]),
        ("della_linear", True, {"seed": 4}, [{"weight": w[0], "density": 0.4, "epsilon": 0.2}, {"weight": w[2], "density": 0.5}]),
        ("magmax", True, {"lambda": 0.9}, [{}, {}, {}]),
        ("slerp", True, {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]}, [{}]),
        ("model_stock", True, {}, [{}, {}, {}]),
        ("nearswap", True, {"t": [0.0005, 0.002, 0.01]}, [{}]),
        ("passthrough", False, {}, [{"scale": [{"filter": "mlp", "value": 0.5}, {"value": 1}]}]),
        ("model_stock", True, {"filter_wise": True}, [{}, {}, {}]),
        ("nuslerp", True, {}, [{"weight": 0.4}, {"weight": [0.2, 0.9]}]),
        ("nuslerp", False, {"nuslerp_flatten": False}, [{"weight": 1.0}, {"weight": 0.5}]),
        ("multislerp", True, {}, [{"weight": w[0]}, {"weight": w[1]}, {"weight": gradient}]),
        ("multislerp", False, {"normalize_weights": False}, [{"weight": 0.5}, {"weight": 0.5}]),
        ("karcher", False, {}, [{}, {}, {}]),
        ("karcher", True, {"max_iter": 5}, [{}, {}]),  # the base is one more input
        ("sce", True, {"select_topk": 0.5}, [{}, {}, {}]),
        ("sce", True, {}, [{}, {}]),
        ("ram", True, {"epsilon": 0.01}, [{}, {}, {}]),
        ("ramplus_tl", True, {"r": 0.3, "alpha": 0.5, "epsilon": 0.01}, [{}, {}, {}]),
        ("arcee_fusion", True, {}, [{}]),
    ]


def group_methods(binary, work):
    rng = np.random.default_rng(8)
    base, models = make_weights(rng, 3)
    for dtype_name in ("F32", "F16", "BF16"):
        folder = os.path.join(work, "methods_" + dtype_name)
        os.makedirs(folder, exist_ok=True)
        base_path = write_model(os.path.join(folder, "base"), base, dtype_name, "single")
        paths = [write_model(os.path.join(folder, "m0"), models[0], dtype_name, "sharded"),
                 write_model(os.path.join(folder, "m1"), models[1], dtype_name, "single"),
                 write_model(os.path.join(folder, "m2.safetensors"), models[2], dtype_name, "file")]
        for c, (method, needs_base, top, per_model) in enumerate(method_cases()):
            if dtype_name != "F32" and c % 2 == 1:
                continue  # every method in f32; in f16 and bf16 one case of each pair suffices
            label = "%s %s case %d" % (dtype_name, method, c)
            entries = list(zip(paths, per_model))
            config_models = entries if method != "ties" else [(base_path, None)] + entries  # base listed, as in mergekit's example
            config = write_config(os.path.join(folder, "case%d.yml" % c), method, base_path if needs_base else None,
                                  config_models, top)
            out = os.path.join(folder, "out%d" % c)
            result = run(binary, config, out, "--quiet")
            check(result.returncode == 0, "%s: exit %d: %s" % (label, result.returncode, result.stderr.strip()))
            if result.returncode != 0:
                continue
            check(result.stdout == "" and result.stderr == "", "%s: --quiet printed something" % label)
            compare(label, out, method, base if needs_base else None, models[:len(per_model)], top, per_model,
                    [dtype_name] * (1 + len(per_model)), dtype_name)
    print("methods: every method in f32, f16 and bf16 on single, sharded and bare-file inputs")


def group_files(binary, work):
    rng = np.random.default_rng(9)
    base, models = make_weights(rng, 2)
    folder = os.path.join(work, "files")
    os.makedirs(folder, exist_ok=True)
    base_path = write_model(os.path.join(folder, "base"), base, "BF16", "sharded")
    with open(os.path.join(base_path, "tokenizer.json"), "w") as f:
        f.write(tokenizer_json(["t%d" % i for i in range(64)]))
    m0 = write_model(os.path.join(folder, "m0"), models[0], "F32", "single", extra_files=False)
    m1 = write_model(os.path.join(folder, "m1"), models[1], "F16", "single", extra_files=False)
    per_model = [{"weight": 0.7, "density": 0.6}, {"weight": 0.5, "density": 0.8}]
    config = write_config(os.path.join(folder, "ties.yml"), "ties", base_path, list(zip([m0, m1], per_model)), {},
                          "dtype: bfloat16\nout_dtype: float16\ntokenizer_source: base\n")

    # Dry run: a plan, exit 0, nothing written.
    out = os.path.join(folder, "out")
    result = run(binary, config, out, "--dry-run")
    check(result.returncode == 0, "dry run: exit %d: %s" % (result.returncode, result.stderr))
    check("tensors: %d" % (len(architecture()) + 1) in result.stdout, "dry run: no tensor count in %r" % result.stdout)
    check("estimated peak memory" in result.stdout, "dry run: no memory estimate")
    check(not os.path.exists(out) and not [p for p in os.listdir(folder) if p.startswith("out")],
          "dry run: something was written")

    # Mixed input dtypes (bf16 base, f32 and f16 models), out_dtype, sharding, carried files.
    result = run(binary, config, out, "--shard-size", "3KB", "--threads", "2")
    check(result.returncode == 0, "sharded output: exit %d: %s" % (result.returncode, result.stderr))
    check("ties merged" in result.stdout, "sharded output: no summary line in %r" % result.stdout)
    shards = sorted(p for p in os.listdir(out) if p.endswith(".safetensors"))
    check(len(shards) > 2 and os.path.exists(os.path.join(out, "model.safetensors.index.json")),
          "sharded output: %d shards and an index expected with --shard-size 3KB" % len(shards))
    for shard in shards:
        tensors, _ = st.read(os.path.join(out, shard))
        data = sum(a.nbytes for _, a in tensors.values())
        check(data <= 3000 or len(tensors) == 1, "shard %s holds %d bytes of tensors, over 3KB" % (shard, data))
    compare("mixed dtypes", out, "ties", base, models, {}, per_model, ["BF16", "F32", "F16"], "F16")
    with open(os.path.join(out, "config.json")) as f:
        check(json.load(f).get("torch_dtype") == "float16", "config.json: torch_dtype not set to the output dtype")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "mergekit_config.yml", "README.md"):
        check(os.path.exists(os.path.join(out, name)), "output lacks %s" % name)
    with open(os.path.join(out, "mergekit_config.yml")) as f, open(config) as g:
        check(f.read() == g.read(), "mergekit_config.yml is not the config as written")
    with open(os.path.join(out, "README.md")) as f:
        card = f.read()
        check("ties" in card and m0 in card and m1 in card, "the model card does not name the method and models")
    check(not [p for p in os.listdir(folder) if ".staging" in p or ".partial" in p], "temporary files left behind")

    # The output exists: refused, untouched; --allow-overwrite replaces it.
    before = sorted(os.listdir(out))
    result = run(binary, config, out, "--quiet")
    check(result.returncode == EXIT_OUTPUT and "exists" in result.stderr,
          "existing output: exit %d, %r" % (result.returncode, result.stderr))
    check(sorted(os.listdir(out)) == before, "existing output: changed although refused")
    result = run(binary, config, out, "--quiet", "--allow-overwrite", "--out-dtype", "float32")
    check(result.returncode == 0, "--allow-overwrite: exit %d: %s" % (result.returncode, result.stderr))
    compare("--out-dtype float32", out, "ties", base, models, {}, per_model, ["BF16", "F32", "F16"], "F32")
    print("files: dry run, mixed input dtypes, out_dtype, sharding, carried files, overwrite")


def write_adapter(path, base, rng, rank, alpha, targets, dtype_name="F32", extra=None, config_extra=None):
    os.makedirs(path, exist_ok=True)
    tensors, updates = [], {}
    for module in targets:
        w = base[module + ".weight"]
        a = rng.normal(0, 0.3, size=(rank, w.shape[1]))
        b = rng.normal(0, 0.3, size=(w.shape[0], rank))
        a_s, a32 = stored(a, dtype_name)
        b_s, b32 = stored(b, dtype_name)
        tensors += [("base_model.model.%s.lora_A.weight" % module, dtype_name, a_s),
                    ("base_model.model.%s.lora_B.weight" % module, dtype_name, b_s)]
        updates[module + ".weight"] = (alpha / rank) * (b32.astype(np.float64) @ a32.astype(np.float64))
    for name, values in (extra or {}).items():
        tensors.append(("base_model.model." + name, dtype_name, stored(values, dtype_name)[0]))
    st.write(os.path.join(path, "adapter_model.safetensors"), tensors, {"format": "pt"})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha,
              "target_modules": sorted({t.split(".")[-1] for t in targets})}
    config.update(config_extra or {})
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return updates


def group_lora(binary, work):
    rng = np.random.default_rng(10)
    base, models = make_weights(rng, 1)
    folder = os.path.join(work, "lora")
    os.makedirs(folder, exist_ok=True)
    for dtype_name in ("F32", "BF16"):
        base_path = write_model(os.path.join(folder, "base_" + dtype_name), base, dtype_name, "single")
        m0 = write_model(os.path.join(folder, "m0_" + dtype_name), models[0], dtype_name, "sharded")
        targets = ["model.layers.%d.self_attn.q_proj" % i for i in range(LAYERS)] + ["model.layers.1.mlp.up_proj"]
        head = rng.normal(0, 0.5, size=base["lm_head.weight"].shape)
        updates = write_adapter(os.path.join(folder, "adapter_" + dtype_name), base, rng, 4, 8, targets,
                                extra={"lm_head.weight": head})
        # The adapted model: W + alpha/r B A rounded into the base's dtype (as merge_and_unload),
        # and the modules_to_save tensor in place of the base's.
        adapted = {}
        for name, w in base.items():
            w32 = stored(w, dtype_name)[1].astype(np.float64)
            if name in updates:
                w32 = w32 + updates[name]
            if name == "lm_head.weight":
                w32 = stored(head, "F32")[1].astype(np.float64)
            adapted[name] = stored(w32, dtype_name)[1].astype(np.float64)
        per_model = [{"weight": 0.4}, {"weight": 0.8}]
        lora_ref = "%s+%s" % (base_path, os.path.join(folder, "adapter_" + dtype_name))
        config = write_config(os.path.join(folder, "lora_%s.yml" % dtype_name), "task_arithmetic", base_path,
                              [(lora_ref, per_model[0]), (m0, per_model[1])])
        out = os.path.join(folder, "out_" + dtype_name)
        result = run(binary, config, out, "--quiet")
        check(result.returncode == 0, "LoRA %s: exit %d: %s" % (dtype_name, result.returncode, result.stderr))
        if result.returncode == 0:
            # adapted values are already rounded to the storage dtype; re-quantising them is exact
            compare("LoRA " + dtype_name, out, "task_arithmetic", base, [adapted, models[0]], {}, per_model,
                    [dtype_name] * 3, dtype_name)
    # Errors: an adapter naming a module the model lacks; a missing adapter folder; DoRA.
    base_path = os.path.join(folder, "base_F32")
    bad = os.path.join(folder, "adapter_bad")
    write_adapter(bad, {"model.layers.9.self_attn.q_proj.weight": np.zeros((HIDDEN, HIDDEN))}, rng, 2, 4,
                  ["model.layers.9.self_attn.q_proj"])
    dora = os.path.join(folder, "adapter_dora")
    write_adapter(dora, base, rng, 2, 4, ["model.layers.0.self_attn.q_proj"], config_extra={"use_dora": True})
    for label, adapter, needle in (("unknown module", bad, "model.layers.9.self_attn.q_proj.weight"),
                                   ("missing adapter", os.path.join(folder, "nowhere"), "nowhere"),
                                   ("DoRA", dora, "DoRA")):
        config = write_config(os.path.join(folder, "bad.yml"), "linear", None,
                              [("%s+%s" % (base_path, adapter), {"weight": 1.0})])
        out = os.path.join(folder, "bad_out")
        result = run(binary, config, out, "--quiet")
        check(result.returncode == EXIT_INPUT and needle in result.stderr,
              "LoRA %s: exit %d, %r" % (label, result.returncode, result.stderr))
        check(not os.path.exists(out), "LoRA %s: output folder left" % label)
    print("lora: PEFT adapters in f32 and bf16 (q_proj, up_proj, modules_to_save), adapter errors")


def group_errors(binary, work):
    rng = np.random.default_rng(11)
    base, models = make_weights(rng, 2)
    folder = os.path.join(work, "errors")
    os.makedirs(folder, exist_ok=True)
    base_path = write_model(os.path.join(folder, "base"), base, "F32", "single")
    m0 = write_model(os.path.join(folder, "m0"), models[0], "F32", "single")
    m1 = write_model(os.path.join(folder, "m1"), models[1], "F32", "sharded")
    missing = dict(models[1])
    del missing["model.layers.2.mlp.up_proj.weight"]
    m_missing = write_model(os.path.join(folder, "m_missing"), missing, "F32", "single")
    reshaped = dict(models[1])
    reshaped["model.norm.weight"] = np.zeros(HIDDEN + 1)
    m_shape = write_model(os.path.join(folder, "m_shape"), reshaped, "F32", "single")
    m_ids = write_model(os.path.join(folder, "m_ids"), models[1], "F32", "single",
                        position_ids=np.arange(1, 9, dtype=np.int64).reshape(1, 8))
    garbage = os.path.join(folder, "garbage.safetensors")
    with open(garbage, "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    truncated = os.path.join(folder, "truncated.safetensors")
    with open(os.path.join(m0, "model.safetensors"), "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) - 100])
    good = [(m0, {"weight": 0.5, "density": 0.5}), (m1, {"weight": 0.5, "density": 0.5})]

    def config_text(name, text):
        path = os.path.join(folder, name + ".yml")
        with open(path, "w") as f:
            f.write(text)
        return path

    cases = [
        # (label, config, expected exit, text the message must contain, options)
        ("unknown method", write_config(os.path.join(folder, "c1.yml"), "frobnicate", base_path, good), EXIT_CONFIG,
         "frobnicate", []),
        ("missing weight", write_config(os.path.join(folder, "c2.yml"), "ties", base_path,
                                        [(m0, {"density": 0.5}), (m1, {"weight": 1.0})]), EXIT_CONFIG, "weight", []),
        ("density out of range", write_config(os.path.join(folder, "c3.yml"), "ties", base_path,
                                              [(m0, {"weight": 1.0, "density": 1.5}), (m1, {"weight": 1.0})]),
         EXIT_CONFIG, "models[0].parameters.density", []),
        ("invalid YAML", config_text("c4", "merge_method: ties\nmodels: [\n  - {model: x\n"), EXIT_CONFIG, "line", []),
        ("NaN weight", config_text("c5", "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: .nan}\n" % m0),
         EXIT_CONFIG, "weight", []),
        ("slices", config_text("c6", "merge_method: slerp\nbase_model: %s\nslices:\n  - sources:\n      - model: %s\n"
                               "        layer_range: [0, 4]\nparameters: {t: 0.5}\n" % (base_path, m0)),
         EXIT_CONFIG, "slices", []),
        ("unknown key", config_text("c7", "merge_method: linear\nmodels:\n  - model: %s\n    parameters: {weight: 1}\n"
                                    "normalise: true\n" % m0), EXIT_CONFIG, "normalise", []),
        ("unknown parameter", write_config(os.path.join(folder, "c8.yml"), "ties", base_path,
                                           [(m0, {"weight": 1.0, "densty": 0.5}), (m1, {"weight": 1.0})]),
         EXIT_CONFIG, "densty", []),
        ("tokenizer_source union without tokenizer.json", write_config(os.path.join(folder, "c9.yml"), "ties", base_path,
                                                                      good, None, "tokenizer_source: union\n"),
         EXIT_INPUT, "tokenizer.json", []),
        ("an invalid chat template", write_config(os.path.join(folder, "c10.yml"), "ties", base_path, good, None,
                                                  "chat_template: nonsense\n"), EXIT_CONFIG, "chat_template", []),
        ("missing config", os.path.join(folder, "no_such_config.yml"), EXIT_CONFIG, "no_such_config", []),
        ("missing model", write_config(os.path.join(folder, "i1.yml"), "ties", base_path,
                                       [(os.path.join(folder, "no_such_model"), {"weight": 1.0})]), EXIT_INPUT,
         "no_such_model", []),
        ("malformed safetensors", write_config(os.path.join(folder, "i2.yml"), "linear", None,
                                               [(garbage, {"weight": 1.0})]), EXIT_INPUT, "garbage.safetensors", []),
        ("truncated safetensors", write_config(os.path.join(folder, "i3.yml"), "linear", None,
                                               [(truncated, {"weight": 1.0}), (m1, {"weight": 1.0})]), EXIT_INPUT,
         "truncated.safetensors", []),
        ("tensor missing from a model", write_config(os.path.join(folder, "i4.yml"), "ties", base_path,
                                                     [(m0, {"weight": 1.0}), (m_missing, {"weight": 1.0})]),
         EXIT_INPUT, "model.layers.2.mlp.up_proj.weight", []),
        ("shapes disagree", write_config(os.path.join(folder, "i5.yml"), "ties", base_path,
                                         [(m0, {"weight": 1.0}), (m_shape, {"weight": 1.0})]), EXIT_INPUT,
         "model.norm.weight", []),
        ("integer buffers differ", write_config(os.path.join(folder, "i6.yml"), "ties", base_path,
                                                [(m0, {"weight": 1.0}), (m_ids, {"weight": 1.0})]), EXIT_INPUT,
         "model.rotary_emb.position_ids", []),
        ("bad --shard-size", write_config(os.path.join(folder, "u1.yml"), "ties", base_path, good), EXIT_USAGE,
         "shard-size", ["--shard-size", "lots"]),
        # Without the CUDA backend a usage error, with it a GPU error: there is no device 999.
        ("--device cuda:999", os.path.join(folder, "u1.yml"), (EXIT_USAGE, EXIT_DEVICE), "cuda", ["--device", "cuda:999"]),
        ("--device tpu", os.path.join(folder, "u1.yml"), EXIT_USAGE, "tpu", ["--device", "tpu"]),
        ("output under a file", os.path.join(folder, "u1.yml"), EXIT_OUTPUT, "", [],),
    ]
    for label, config, expected_exit, needle, options in cases:
        out = os.path.join(folder, "out")
        if label == "output under a file":
            out = os.path.join(garbage, "out")
        result = run(binary, config, out, *options)
        allowed = expected_exit if isinstance(expected_exit, tuple) else (expected_exit,)
        check(result.returncode in allowed, "%s: exit %d, expected %s: %s" % (label, result.returncode, expected_exit,
                                                                             result.stderr.strip()))
        check(needle in result.stderr, "%s: the message %r does not name %r" % (label, result.stderr.strip(), needle))
        check(result.stderr.count("\n") == 1, "%s: expected one line of error, got %r" % (label, result.stderr))
        check(not os.path.exists(out), "%s: an output folder was left" % label)

    # Never destroy an input: an output that is, lies inside or contains an input (through
    # symlinks too) is refused with exit 5 whatever the flags, before anything is read.
    guarded = write_config(os.path.join(folder, "guarded.yml"), "ties", base_path, good)
    inputs = (base_path, m0, m1, guarded)
    before = {p: tree_digest(p) for p in inputs}
    base_link = os.path.join(folder, "base_link")
    os.symlink(base_path, base_link)
    hostile_outputs = [
        ("the base model's folder", base_path, "is the base model"),
        ("the base with a trailing slash", base_path + "/", "is the base model"),
        ("a symlink to the base", base_link, "is the base model"),
        ("inside a model folder", os.path.join(m0, "merged"), "lies inside the input model"),
        ("inside the base, through a symlink", os.path.join(base_link, "sub"), "lies inside the base model"),
        ("a folder holding every input", folder, "contains the"),
        ("the config file", guarded, "is the config"),
    ]
    for label, out, needle in hostile_outputs:
        for flags in ([], ["--allow-overwrite"], ["--allow-overwrite", "--dry-run"]):
            result = run(binary, guarded, out, "--quiet", *flags)
            check(result.returncode == EXIT_OUTPUT and needle in result.stderr,
                  "output %s %s: exit %d, %r" % (label, flags, result.returncode, result.stderr.strip()))
    check({p: tree_digest(p) for p in inputs} == before, "an input changed although the output was refused")
    check(not [p for p in os.listdir(folder) if "staging" in p], "a staging folder was left")

    # An output that is an existing regular file is refused whatever the flags, and kept.
    victim = os.path.join(folder, "notes.txt")
    with open(victim, "w") as f:
        f.write("keep me")
    result = run(binary, guarded, victim, "--quiet", "--allow-overwrite")
    check(result.returncode == EXIT_OUTPUT and "regular file" in result.stderr,
          "output is a regular file: exit %d, %r" % (result.returncode, result.stderr.strip()))
    with open(victim) as f:
        check(f.read() == "keep me", "the regular file given as output was changed")

    # A FIFO as a model file is an input error, found without blocking (as a file and in a folder).
    fifo = os.path.join(folder, "pipe.safetensors")
    os.mkfifo(fifo)
    fifo_folder = os.path.join(folder, "fifo_model")
    os.makedirs(fifo_folder)
    os.mkfifo(os.path.join(fifo_folder, "model.safetensors"))
    for label, model in (("a FIFO file", fifo), ("a folder whose model.safetensors is a FIFO", fifo_folder)):
        config = write_config(os.path.join(folder, "fifo.yml"), "linear", None, [(model, {"weight": 1.0}), (m1, {"weight": 1.0})])
        out = os.path.join(folder, "out_fifo")
        try:
            result = run(binary, config, out, "--quiet", timeout=60)
            check(result.returncode == EXIT_INPUT and "FIFO" in result.stderr,
                  "%s: exit %d, %r" % (label, result.returncode, result.stderr.strip()))
        except subprocess.TimeoutExpired:
            check(False, "%s: alloy-merge blocked on the FIFO" % label)
        check(not os.path.exists(out), "%s: an output folder was left" % label)

    # A full disk: writes beyond 20 KB fail (RLIMIT_FSIZE), the merge stops, nothing is left.
    config = os.path.join(folder, "u1.yml")
    out = os.path.join(folder, "out_full")
    result = run(binary, config, out, "--quiet", fsize_limit=20000)
    check(result.returncode == EXIT_OUTPUT, "disk full: exit %d: %s" % (result.returncode, result.stderr))
    check(not os.path.exists(out) and not [p for p in os.listdir(folder) if "staging" in p],
          "disk full: output or staging folder left")
    print("errors: %d error cases, each with its exit code, message and no output; %d outputs that would destroy an "
          "input refused; a regular file kept; FIFOs refused without blocking" % (len(cases) + 1, len(hostile_outputs)))


def group_slices(binary, work):
    """mergekit's slices, as its plan.py reads them: output layer k of a slice from layer
    layer_range[0] + idx of each source, t = idx / (len - 1) per slice (1 for one layer), the
    weights outside the stack at t = 0, from the first slice (before the stack) or the last."""
    rng = np.random.default_rng(12)
    a, others = make_weights(rng, 1)
    b = others[0]
    folder = os.path.join(work, "slices")
    os.makedirs(folder, exist_ok=True)
    cases = 0
    for dtype_name in ("F32", "BF16"):
        pa = write_model(os.path.join(folder, "a_" + dtype_name), a, dtype_name, "single")
        pb = write_model(os.path.join(folder, "b_" + dtype_name), b, dtype_name, "sharded")
        for path in (pa, pb):  # a config that states the layer count, as real ones do
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
                           "torch_dtype": "float32"}, f)
        qa = {n: stored(v, dtype_name)[1] for n, v in a.items()}
        qb = {n: stored(v, dtype_name)[1] for n, v in b.items()}

        # A frankenmerge (mergekit's orcamini-platy-44layer.yml shape): A's layers 0-2, then B's 1-3.
        config = os.path.join(folder, "passthrough_%s.yml" % dtype_name)
        with open(config, "w") as f:
            f.write("slices:\n  - sources:\n      - model: %s\n        layer_range: [0, 3]\n"
                    "  - sources:\n      - model: %s\n        layer_range: [1, 4]\n"
                    "        parameters:\n          scale:\n            - filter: mlp.down_proj\n              value: 0.5\n"
                    "            - value: 1\nmerge_method: passthrough\ndtype: float32\n" % (pa, pb))
        out = os.path.join(folder, "out_passthrough_" + dtype_name)
        result = run(binary, config, out, "--quiet")
        check(result.returncode == 0, "passthrough %s: exit %d: %s" % (dtype_name, result.returncode, result.stderr.strip()))
        if result.returncode == 0:
            got = read_output(out)
            expected = {}
            for name, _ in architecture():
                parts = name.split(".")
                if "layers" in parts:
                    k = int(parts[2])
                    source, layer, scale = (qa, k, 1.0) if k < 3 else (qb, k - 3 + 1, 0.5 if "mlp.down_proj" in name else 1.0)
                    parts[2] = str(layer)
                    expected[name] = scale * source[".".join(parts)]
                else:
                    # before the stack from the first slice (A), after it from the last (B)
                    expected[name] = (qa if "embed" in name else qb)[name]
            names_out = {n for n in got if n != "model.rotary_emb.position_ids"}
            want_names = set()
            for name in expected:
                want_names.add(name)
            for k in range(LAYERS, 6):
                for name, _ in architecture():
                    if name.startswith("model.layers.0."):
                        src = name.replace("model.layers.0.", "model.layers.%d." % (k - 3 + 1))
                        scale = 0.5 if "mlp.down_proj" in name else 1.0
                        out_name = name.replace("model.layers.0.", "model.layers.%d." % k)
                        expected[out_name] = scale * qb[src]
                        want_names.add(out_name)
            check(names_out == want_names, "passthrough %s: output tensors %s" % (dtype_name, sorted(names_out ^ want_names)))
            for name, want in expected.items():
                if name not in got:
                    continue
                value = st.as_float64(*got[name])
                check(np.array_equal(value, want.astype(np.float32).astype(np.float64)),
                      "passthrough %s: %s is not its source tensor (times its scale)" % (dtype_name, name))
            with open(os.path.join(out, "config.json")) as f:
                check(json.load(f).get("num_hidden_layers") == 6, "passthrough: config.json does not say 6 layers")
            cases += 1

        # gradient-slerp.yml's shape over two slices: t restarts in each, per filter.
        t_setting = [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]}, {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                     {"value": 0.5}]
        config = os.path.join(folder, "slerp_%s.yml" % dtype_name)
        with open(config, "w") as f:
            f.write("slices:\n  - sources:\n      - {model: %s, layer_range: [0, 3]}\n      - {model: %s, layer_range: [0, 3]}\n"
                    "  - sources:\n      - {model: %s, layer_range: [3, 4]}\n      - {model: %s, layer_range: [3, 4]}\n"
                    "merge_method: slerp\nbase_model: %s\nparameters:\n  t: %s\ndtype: float32\n"
                    % (pa, pb, pa, pb, pa, yaml_value(t_setting)))
        out = os.path.join(folder, "out_slerp_" + dtype_name)
        result = run(binary, config, out, "--quiet")
        check(result.returncode == 0, "slerp slices %s: exit %d: %s" % (dtype_name, result.returncode, result.stderr.strip()))
        if result.returncode == 0:
            got = read_output(out)
            worst = 0.0
            for name, _ in architecture():
                parts = name.split(".")
                t = 0.0
                if "layers" in parts:
                    k = int(parts[2])
                    t = k / 2 if k < 3 else 1.0  # slice one: 3 layers; slice two: one layer, t = 1
                want = ref.slerp(qa[name], [qb[name]], {"t": evaluate(t_setting, name, t)})
                value = st.as_float64(*got[name])
                error = float(np.abs(value - want).max())
                worst = max(worst, error)
                check(np.allclose(value, want, atol=2e-6, rtol=1e-5), "slerp slices %s: %s differs by %.3g" % (dtype_name, name, error))
            with open(os.path.join(out, "config.json")) as f:
                check(json.load(f).get("num_hidden_layers") == LAYERS, "slerp slices: config.json's layer count changed")
            cases += 1

    # Errors: each names the slice and source, exit 3 (config) before anything is written.
    pa = os.path.join(folder, "a_F32")
    bad = [
        ("beyond the stack", "slices:\n  - sources:\n      - {model: %s, layer_range: [2, 9]}\nmerge_method: passthrough\n" % pa,
         "slices[0].sources[0].layer_range"),
        ("unequal ranges", "slices:\n  - sources:\n      - {model: %s, layer_range: [0, 2]}\n      - {model: %s, layer_range: [0, 3]}\n"
         "merge_method: linear\nparameters: {weight: 1}\n" % (pa, pa + "/model.safetensors"), "spans 3 layers"),
        ("two sources for passthrough", "slices:\n  - sources:\n      - {model: %s, layer_range: [0, 2]}\n"
         "      - {model: %s, layer_range: [0, 2]}\nmerge_method: passthrough\n" % (pa, pa + "/model.safetensors"),
         "exactly 1 model"),
        ("no layer_range", "slices:\n  - sources:\n      - {model: %s}\nmerge_method: passthrough\n" % pa, "layer_range"),
        ("models and slices", "slices:\n  - sources:\n      - {model: %s, layer_range: [0, 2]}\nmodels:\n  - model: %s\n"
         "merge_method: passthrough\n" % (pa, pa), "exactly one of models"),
    ]
    check_config_refusals(binary, folder, "slices", bad)
    print("slices: %d merges (passthrough frankenmerge with a filtered scale, slerp over two slices) in f32 and bf16, "
          "%d errors" % (cases, len(bad)))


def vlm_architecture(text_layers=LAYERS, vision_layers=LAYERS):
    """A vision-language model named as Gemma 3's is (language_model., vision_tower.,
    multi_modal_projector.)."""
    shapes = [("language_model.model.embed_tokens.weight", (64, HIDDEN))]
    for i in range(text_layers):
        p = "language_model.model.layers.%d." % i
        shapes += [(p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "mlp.up_proj.weight", (32, HIDDEN)),
                   (p + "input_layernorm.weight", (HIDDEN,))]
    shapes += [("language_model.model.norm.weight", (HIDDEN,)), ("language_model.lm_head.weight", (64, HIDDEN))]
    shapes += [("vision_tower.vision_model.embeddings.patch_embedding.weight", (HIDDEN, 12))]
    for i in range(vision_layers):
        p = "vision_tower.vision_model.encoder.layers.%d." % i
        shapes += [(p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "layer_norm1.bias", (HIDDEN,))]
    shapes += [("vision_tower.vision_model.post_layernorm.weight", (HIDDEN,)),
               ("multi_modal_projector.mm_input_projection_weight", (HIDDEN, HIDDEN))]
    return shapes


def group_modules(binary, work):
    """mergekit's modules, as its plan.py plans them (plan_module): each module its own models or
    slices, t restarting per slice within a module, parameters looked up source -> slice ->
    module -> top level; the output config's layer count changed in the sub-config of the stack."""
    rng = np.random.default_rng(21)
    folder = os.path.join(work, "modules")
    os.makedirs(folder, exist_ok=True)
    weights = []
    for _ in range(2):
        weights.append({name: rng.normal(0, 0.5, size=shape) for name, shape in vlm_architecture()})
    cases = 0
    for dtype_name in ("F32", "BF16"):
        paths = []
        for k, w in enumerate(weights):
            path = os.path.join(folder, "%s_%s" % ("ab"[k], dtype_name))
            os.makedirs(path, exist_ok=True)
            st.write(os.path.join(path, "model.safetensors"), [(n, dtype_name, stored(v, dtype_name)[0]) for n, v in w.items()],
                     {"format": "pt"})
            with open(os.path.join(path, "config.json"), "w") as f:
                json.dump({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                           "text_config": {"num_hidden_layers": LAYERS, "hidden_size": HIDDEN},
                           "vision_config": {"num_hidden_layers": LAYERS}, "torch_dtype": "float32"}, f)
            paths.append(path)
        qa, qb = ({n: stored(v, dtype_name)[1] for n, v in w.items()} for w in weights)
        pa, pb = paths
        config = os.path.join(folder, "vlm_%s.yml" % dtype_name)
        with open(config, "w") as f:
            f.write("modules:\n"
                    "  text_decoder:\n"
                    "    slices:\n"
                    "      - sources:\n"
                    "          - {model: %s, layer_range: [0, 3]}\n"
                    "          - {model: %s, layer_range: [0, 3]}\n"
                    "      - sources:\n"
                    "          - {model: %s, layer_range: [1, 4]}\n"
                    "          - {model: %s, layer_range: [1, 4]}\n"
                    "        parameters:\n"
                    "          t: [{filter: mlp, value: 0.9}]\n"
                    "    parameters: {t: [0, 1]}\n"
                    "  vision_tower:\n"
                    "    models: [{model: %s}, {model: %s}]\n"
                    "    parameters:\n"
                    "      t: [{filter: layer_norm1, value: 0.25}]\n"
                    "  multi_modal_projector:\n"
                    "    models: [{model: %s}, {model: %s}]\n"
                    "merge_method: slerp\nbase_model: %s\nparameters: {t: 0.6}\ndtype: float32\n"
                    % (pa, pb, pa, pb, pa, pb, pa, pb, pa))
        out = os.path.join(folder, "out_" + dtype_name)
        dry = run(binary, config, out, "--dry-run")
        check(dry.returncode == 0 and "module vision_tower: %d tensors (names with the component 'vision_tower'"
              % (2 + 2 * LAYERS) in dry.stdout and "module text_decoder: " in dry.stdout
              and "every tensor no other module takes" in dry.stdout
              and "layers: 6 of 'language_model.model.layers.' from slices" in dry.stdout,
              "modules %s: dry run: %r %r" % (dtype_name, dry.stdout, dry.stderr))
        result = run(binary, config, out, "--quiet")
        check(result.returncode == 0, "modules %s: exit %d: %s" % (dtype_name, result.returncode, result.stderr.strip()))
        if result.returncode != 0:
            continue
        got = read_output(out)
        expected = {}
        for name, _ in vlm_architecture(text_layers=6):
            parts = name.split(".")
            if name.startswith("language_model."):
                if "layers" in parts:
                    k = int(parts[3])
                    idx, source = (k, k) if k < 3 else (k - 3, k - 3 + 1)
                    parts[3] = str(source)
                    src = ".".join(parts)
                    t = 0.9 if ("mlp" in name and k >= 3) else idx / 2  # the slice's filter, else the module's gradient
                else:
                    src, t = name, 0.0  # outside the stack: t = 0 of the module's gradient
            elif name.startswith("vision_tower."):
                src, t = name, (0.25 if "layer_norm1" in name else 0.6)  # the module's filter, else the top level
            else:
                src, t = name, 0.6
            expected[name] = ref.slerp(qa[src], [qb[src]], {"t": t})
        check(set(got) == set(expected), "modules %s: output tensors %s" % (dtype_name, sorted(set(got) ^ set(expected))))
        for name, want in expected.items():
            if name not in got:
                continue
            value = st.as_float64(*got[name])
            check(np.allclose(value, want, atol=2e-6, rtol=1e-5),
                  "modules %s: %s differs from NumPy by %.3g" % (dtype_name, name, float(np.abs(value - want).max())))
        with open(os.path.join(out, "config.json")) as f:
            written = json.load(f)
        check(written["text_config"]["num_hidden_layers"] == 6 and written["vision_config"]["num_hidden_layers"] == LAYERS,
              "modules %s: config.json layer counts %r" % (dtype_name, written))
        cases += 1

    # Errors: exit 3 (config), nothing written.
    pa, pb = (os.path.join(folder, "%s_F32" % c) for c in "ab")
    two = "    models: [{model: %s}, {model: %s}]\n" % (pa, pb)
    bad = [
        ("the language model left out", "modules:\n  vision_tower:\n" + two + "  multi_modal_projector:\n" + two
         + "merge_method: linear\nparameters: {weight: 1}\n", "'language_model.model.embed_tokens.weight'"),
        ("two modules without a place", "modules:\n  text_decoder:\n" + two + "  image_encoder:\n" + two
         + "merge_method: linear\nparameters: {weight: 1}\n", "weight_prefix"),
        ("models and slices", "modules:\n  text_decoder:\n" + two + "    slices: [{sources: [{model: %s, layer_range: [0, 1]}]}]\n"
         % pa + "merge_method: linear\nparameters: {weight: 1}\n", "modules.text_decoder: has both"),
        ("an unknown key", "modules:\n  text_decoder:\n" + two + "    layers: 3\nmerge_method: linear\n",
         "modules.text_decoder.layers"),
        ("modules beside models", "modules:\n  text_decoder:\n" + two + "models: [{model: %s}]\nmerge_method: linear\n" % pa,
         "exactly one of models"),
        ("slices over two stacks", "modules:\n  everything:\n    slices: [{sources: [{model: %s, layer_range: [0, 1]}]}]\n"
         % pa + "merge_method: passthrough\n", "modules.everything: slices"),
    ]
    check_config_refusals(binary, folder, "modules", bad)
    print("modules: %d merges of a vision-language model (slices of the language model, whole-model merges of the "
          "vision tower and projector, module-level parameters) in f32 and bf16, %d errors" % (cases, len(bad)))


def group_vocab(binary, work):
    """mergekit's rule for vocabularies of different sizes (rectify_embed_sizes): token embeddings
    and output heads whose row counts differ are merged over the rows every model has; the
    config's vocab_size follows; any other shape difference is still refused."""
    rng = np.random.default_rng(13)
    base, models = make_weights(rng, 2)
    grown = []
    for m in models:  # two added tokens: 66 rows where the base has 64
        g = dict(m)
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            g[name] = np.concatenate([m[name], rng.normal(0, 0.5, size=(2, HIDDEN))])
        grown.append(g)
    folder = os.path.join(work, "vocab")
    os.makedirs(folder, exist_ok=True)
    base_path = write_model(os.path.join(folder, "base"), base, "F32", "single")
    paths = [write_model(os.path.join(folder, "m%d" % i), g, "F32", "single") for i, g in enumerate(grown)]
    for path, rows in ((base_path, 64), (paths[0], 66), (paths[1], 66)):
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN, "vocab_size": rows}, f)

    def cropped(weights):
        return {n: (v[:64] if v.ndim == 2 and v.shape[0] == 66 else v) for n, v in weights.items()}

    # TIES with the base: the base's 64 rows, the models' first 64 (mergekit's get_task_vectors).
    per_model = [{"weight": 0.7, "density": 0.5}, {"weight": 0.4, "density": 0.8}]
    config = write_config(os.path.join(folder, "ties.yml"), "ties", base_path, list(zip(paths, per_model)))
    out = os.path.join(folder, "out_ties")
    result = run(binary, config, out, "--quiet")
    check(result.returncode == 0, "vocab ties: exit %d: %s" % (result.returncode, result.stderr.strip()))
    if result.returncode == 0:
        compare("vocab ties", out, "ties", base, [cropped(g) for g in grown], {}, per_model, ["F32"] * 3, "F32")
        with open(os.path.join(out, "config.json")) as f:
            check(json.load(f).get("vocab_size") == 64, "vocab ties: vocab_size is not the base's 64")

    # Linear of a grown model (the donor: its config says 66) and the base: the common 64 rows.
    config = write_config(os.path.join(folder, "linear.yml"), "linear", None,
                          [(paths[0], {"weight": 0.5}), (base_path, {"weight": 0.5})])
    out = os.path.join(folder, "out_linear")
    result = run(binary, config, out, "--quiet")
    check(result.returncode == 0, "vocab linear: exit %d: %s" % (result.returncode, result.stderr.strip()))
    if result.returncode == 0:
        compare("vocab linear", out, "linear", None, [cropped(grown[0]), base], {}, [{"weight": 0.5}] * 2,
                ["F32"] * 3, "F32")
        with open(os.path.join(out, "config.json")) as f:
            check(json.load(f).get("vocab_size") == 64, "vocab linear: vocab_size not rewritten to the merged 64 rows")

    # A layer weight of another shape is still an error naming it (exit 4), nothing written.
    odd = dict(models[0])
    odd["model.layers.1.mlp.up_proj.weight"] = rng.normal(0, 0.5, size=(30, HIDDEN))
    odd_path = write_model(os.path.join(folder, "odd"), odd, "F32", "single")
    config = write_config(os.path.join(folder, "odd.yml"), "ties", base_path, [(odd_path, per_model[0])])
    out = os.path.join(folder, "out_odd")
    result = run(binary, config, out, "--quiet")
    check(result.returncode == EXIT_INPUT and "model.layers.1.mlp.up_proj.weight" in result.stderr,
          "vocab: a layer of another shape: exit %d: %s" % (result.returncode, result.stderr.strip()))
    check(not os.path.exists(out), "vocab: output left after a shape error")
    print("vocab: embeddings and heads of different vocabularies merged over their common rows")


def union_vocabulary(tokenizers):
    """mergekit's build_union_tokenizer (tokenizer/build.py) on (tokens by id, added [(content, entry)],
    vocab_size) triples, base first, each model's tokens taken in id order: the output's tokens by id
    and its added tokens' entries."""
    base_tokens, base_added, _ = tokenizers[0]
    out = list(base_tokens)
    regular, added = [], {}
    for tokens, extra, size in tokenizers:
        for t in tokens[:size]:
            if t not in regular:
                regular.append(t)
        for content, entry in extra:
            if tokens.index(content) < size and content not in added:
                added[content] = entry
    entries = [e for _, e in base_added]
    for t in regular:
        if t not in added and t not in base_tokens:
            out.append(t)
            entries.append({"content": t, "special": False})
    for content, entry in added.items():
        if content not in out:
            out.append(content)
            entries.append(entry)
    return out, entries


def permuted_embeddings(out_tokens, vocabularies, matrices, base_index, rules, rows):
    """mergekit's PermutedEmbeddings (tokenizer/embed.py): each model's matrix in the output's token
    order. rules: token -> ("model", i) | ("zero",) | ("model_token", i, source_token), force."""
    perms = [[(v.index(t) if t in v and v.index(t) < len(m) else -1) for t in out_tokens] for v, m in zip(vocabularies, matrices)]
    width = matrices[0].shape[1]
    defaults = {}
    for tid, t in enumerate(out_tokens):
        present = [i for i, p in enumerate(perms) if p[tid] >= 0]
        if t in rules:
            rule = rules[t][0]
            if rule[0] == "zero":
                defaults[t] = np.zeros(width)
            elif rule[0] == "model":
                defaults[t] = matrices[rule[1]][perms[rule[1]][tid]]
            else:
                defaults[t] = matrices[rule[1]][vocabularies[rule[1]].index(rule[2])]
        elif len(present) == 1:
            defaults[t] = matrices[present[0]][perms[present[0]][tid]]
        elif not present:
            defaults[t] = np.zeros(width)
        elif base_index is not None and perms[base_index][tid] >= 0:
            defaults[t] = matrices[base_index][perms[base_index][tid]]
        else:
            defaults[t] = np.mean([matrices[i][perms[i][tid]] for i in present], axis=0)
    result = []
    for m, p in zip(matrices, perms):
        new = np.zeros((rows, width))
        for tid, t in enumerate(out_tokens):
            force = t in rules and rules[t][1]
            new[tid] = m[p[tid]] if p[tid] >= 0 and not force else defaults[t]
        new[len(out_tokens):] = new[:len(out_tokens)].mean(axis=0)
        result.append(new)
    return result


def group_tokenizer(binary, work):
    """tokenizer_source: union and a model, the tokenizer section (tokens, force, pad_to_multiple_of)
    and chat_template: the output vocabulary, each model's embeddings permuted into it and merged,
    and the tokenizer files and vocab_size that say so, against mergekit's rules in NumPy."""
    rng = np.random.default_rng(14)
    folder = os.path.join(work, "tokenizer")
    os.makedirs(folder, exist_ok=True)
    regular = ["t%d" % i for i in range(62)]
    shuffled = list(regular)
    rng.shuffle(shuffled)
    special = lambda c: (c, True)
    specs = [  # (regular tokens by id, added tokens) per model: base, m0, m1
        (regular, [special("<s>"), special("<pad>")]),
        (shuffled, [special("<s>"), special("<|im_start|>")]),
        (regular + ["x0", "x1"], [special("<s>"), special("<|im_end|>")]),
    ]
    base_w, models_w = make_weights(rng, 2)
    weights = [base_w] + models_w
    paths = []
    for i, ((tokens, added), w) in enumerate(zip(specs, weights)):
        rows = len(tokens) + len(added)
        w = dict(w)
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            w[name] = rng.normal(0, 0.5, size=(rows, HIDDEN))
        weights[i] = w
        path = write_model(os.path.join(folder, ["base", "m0", "m1"][i]), w, "F32", "single")
        with open(os.path.join(path, "tokenizer.json"), "w") as f:
            f.write(tokenizer_json(tokens, added))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN, "vocab_size": rows}, f)
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": 128, "chat_template": "{{ 'model %d' }}{%% for m in messages %%}{%% endfor %%}" % min(i, 1)}, f)
        paths.append(path)
    vocabularies = [tokens + [c for c, _ in added] for tokens, added in specs]
    per_model = [{"weight": 0.6}, {"weight": 0.3}]

    def check_merge(label, config_extra, out_tokens, rules, rows, expect_template):
        config = write_config(os.path.join(folder, label + ".yml"), "task_arithmetic", paths[0],
                              list(zip(paths[1:], per_model)), None, config_extra)
        out = os.path.join(folder, "out_" + label)
        result = run(binary, config, out, "--quiet")
        check(result.returncode == 0, "tokenizer %s: exit %d: %s" % (label, result.returncode, result.stderr.strip()))
        if result.returncode != 0:
            return None
        merged = {n: st.as_float64(d, a) for n, (d, a) in read_output(out).items()}
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            laid = permuted_embeddings(out_tokens, vocabularies, [w[name] for w in weights], 0, rules, rows)
            want = laid[0] + sum(p["weight"] * (m - laid[0]) for p, m in zip(per_model, laid[1:]))
            got = merged.get(name)
            check(got is not None and got.shape == want.shape, "tokenizer %s: %s has shape %s, expected %s" %
                  (label, name, None if got is None else got.shape, want.shape))
            if got is not None and got.shape == want.shape:
                check(np.allclose(got, want, atol=2e-6, rtol=1e-5), "tokenizer %s: %s differs from NumPy by %.3g" %
                      (label, name, np.abs(got - want).max()))
        other = "model.layers.1.mlp.up_proj.weight"
        want = weights[0][other] + sum(p["weight"] * (w[other] - weights[0][other]) for p, w in zip(per_model, weights[1:]))
        check(np.allclose(merged[other], want, atol=2e-6, rtol=1e-5), "tokenizer %s: %s differs" % (label, other))
        with open(os.path.join(out, "config.json")) as f:
            check(json.load(f).get("vocab_size") == rows, "tokenizer %s: config.json vocab_size is not %d" % (label, rows))
        with open(os.path.join(out, "tokenizer_config.json")) as f:
            tokenizer_config = json.load(f)
        check(tokenizer_config.get("chat_template") == expect_template,
              "tokenizer %s: chat_template is %r" % (label, tokenizer_config.get("chat_template")))
        return out, tokenizer_config

    # The union, with a token of the tokenizer section (its row from m0's <s>), padding to 8.
    out_tokens, entries = union_vocabulary([(v, [(c, {"content": c, "special": s}) for c, s in a], len(v))
                                            for v, (_, a) in zip(vocabularies, specs)])
    out_tokens = out_tokens + ["<extra>"]
    rules = {"<|im_end|>": (("model_token", 1, "<s>"), True), "<extra>": (("zero",), False)}
    extra = ("tokenizer:\n  source: union\n  pad_to_multiple_of: 8\n  tokens:\n"
             "    <|im_end|>:\n      source: {kind: model_token, model: %s, token: <s>}\n      force: true\n"
             "    <extra>: {source: {kind: zero}}\nchat_template: chatml\n" % paths[1])
    rows = (len(out_tokens) + 7) // 8 * 8
    chatml = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n'}}{% endfor %}\n{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    dry = run(binary, write_config(os.path.join(folder, "union_dry.yml"), "task_arithmetic", paths[0],
                                   list(zip(paths[1:], per_model)), None, extra),
              os.path.join(folder, "out_dry"), "--dry-run")
    check(dry.returncode == 0 and "vocabulary: %d tokens (%d rows, padded), 2 embedding matrices" %
          (len(out_tokens), (len(out_tokens) + 7) // 8 * 8) in dry.stdout,
          "tokenizer union --dry-run: exit %d: %s" % (dry.returncode, dry.stdout + dry.stderr))
    done = check_merge("union", extra, out_tokens, rules, rows, chatml)
    if done:
        out, tokenizer_config = done
        with open(os.path.join(out, "tokenizer.json")) as f:
            written = json.load(f)
        ids = dict(written["model"]["vocab"])
        ids.update({e["content"]: e["id"] for e in written["added_tokens"]})
        check(ids == {t: i for i, t in enumerate(out_tokens)}, "tokenizer union: tokenizer.json's ids are not the union's")
        decoder = tokenizer_config.get("added_tokens_decoder", {})
        check(sorted(int(k) for k in decoder) == sorted(e["id"] for e in written["added_tokens"]),
              "tokenizer union: added_tokens_decoder does not list the added tokens")
        check(decoder.get(str(out_tokens.index("<|im_start|>")), {}).get("special") is True,
              "tokenizer union: <|im_start|> lost its special flag")
        with open(os.path.join(out, "chat_template.jinja")) as f:
            check(f.read() == chatml, "tokenizer union: chat_template.jinja is not chatml")

    # A model's vocabulary: m1's tokenizer files, the others permuted into it; chat_template auto
    # (two of three models have "model 1").
    done = check_merge("model", "tokenizer_source: %s\nchat_template: auto\n" % paths[2], vocabularies[2], {},
                       len(vocabularies[2]), "{{ 'model 1' }}{% for m in messages %}{% endfor %}")
    if done:
        with open(os.path.join(done[0], "tokenizer.json"), "rb") as f, open(os.path.join(paths[2], "tokenizer.json"), "rb") as g:
            check(f.read() == g.read(), "tokenizer model: tokenizer.json is not the source model's")
    # A tokenizer source outside the merge: only its files are read (it holds no weights).
    outside = os.path.join(folder, "tokenizer_only")
    os.makedirs(outside, exist_ok=True)
    for name in ("tokenizer.json", "config.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(paths[2], name), os.path.join(outside, name))
    check_merge("outside", "tokenizer_source: %s\n" % outside, vocabularies[2], {}, len(vocabularies[2]),
                "{{ 'model 1' }}{% for m in messages %}{% endfor %}")

    # Refusals: a malformed tokenizer.json (exit 4), a token rule naming a model outside the merge
    # (exit 3); nothing written.
    broken = os.path.join(folder, "broken")
    shutil.copytree(paths[1], broken)
    with open(os.path.join(broken, "tokenizer.json"), "w") as f:
        f.write('{"version": "1.0", "added_tokens": []}')
    for label, config_text, code, needle in (
            ("malformed tokenizer.json",
             write_config(os.path.join(folder, "broken.yml"), "task_arithmetic", paths[0], [(broken, per_model[0])],
                          None, "tokenizer_source: union\n"), EXIT_INPUT, "tokenizer.json"),
            ("a token rule outside the merge",
             write_config(os.path.join(folder, "stranger.yml"), "task_arithmetic", paths[0], [(paths[1], per_model[0])],
                          None, "tokenizer:\n  tokens:\n    <x>: {source: %s}\n" % paths[2]), EXIT_CONFIG,
             "not part of the merge")):
        out = os.path.join(folder, "out_refused")
        result = run(binary, config_text, out, "--quiet")
        check(result.returncode == code and needle in result.stderr,
              "tokenizer %s: exit %d: %s" % (label, result.returncode, result.stderr.strip()))
        check(not os.path.exists(out), "tokenizer %s: output left" % label)
    print("tokenizer: union with tokens, force and padding, a model's vocabulary, one outside the merge, chat "
          "templates, refusals")


def group_gpu(binary, work):
    """--device cuda writes the same bytes as --device cpu, for every method (GPU machines only)."""
    os.makedirs(work, exist_ok=True)
    probe = run(binary, "/nonexistent.yml", os.path.join(work, "probe"), "--device", "cuda", "--dry-run")
    if probe.returncode in (EXIT_USAGE, EXIT_DEVICE):
        print("gpu: skipped, no CUDA backend or device here: " + probe.stderr.strip())
        return
    rng = np.random.default_rng(12)
    base, models = make_weights(rng, 3)
    compared = 0
    for dtype_name in ("F32", "BF16"):
        folder = os.path.join(work, dtype_name)
        os.makedirs(folder, exist_ok=True)
        position_ids = np.arange(16, dtype=np.int64)
        base_path = write_model(os.path.join(folder, "base"), base, dtype_name, "sharded", position_ids=position_ids)
        paths = [write_model(os.path.join(folder, "m%d" % i), models[i], dtype_name, "single", position_ids=position_ids)
                 for i in range(3)]
        for c, (method, needs_base, top, per_model) in enumerate(method_cases()):
            label = "%s %s case %d" % (dtype_name, method, c)
            config = write_config(os.path.join(folder, "case%d.yml" % c), method, base_path if needs_base else None,
                                  list(zip(paths, per_model)), top)
            outputs = {}
            for device in ("cpu", "cuda"):
                out = os.path.join(folder, "out%d_%s" % (c, device))
                result = run(binary, config, out, "--quiet", "--device", device, "--shard-size", "20KB")
                check(result.returncode == 0, "%s on %s: exit %d: %s" % (label, device, result.returncode,
                                                                         result.stderr.strip()))
                outputs[device] = out
            if not all(os.path.isdir(o) for o in outputs.values()):
                continue
            names = sorted(os.listdir(outputs["cpu"]))
            check(names == sorted(os.listdir(outputs["cuda"])), "%s: different files: %s" % (label, names))
            for name in names:
                with open(os.path.join(outputs["cpu"], name), "rb") as a, open(os.path.join(outputs["cuda"], name), "rb") as b:
                    check(a.read() == b.read(), "%s: %s differs between --device cpu and --device cuda" % (label, name))
            compared += 1
    print("gpu: %d merges written bit-identically by --device cpu and --device cuda" % compared)


def main():
    binary, work = sys.argv[1], sys.argv[2]
    groups = {"methods": group_methods, "files": group_files, "lora": group_lora, "errors": group_errors,
              "slices": group_slices, "modules": group_modules, "vocab": group_vocab, "tokenizer": group_tokenizer, "gpu": group_gpu}
    chosen = sys.argv[3:] or [g for g in groups if g != "gpu"]
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    for name in chosen:
        groups[name](binary, os.path.join(work, name))
    print("%d checks, %d failures" % (checks, len(failures)))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
