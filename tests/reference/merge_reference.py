"""Independent NumPy implementations of the merge methods, following mergekit's semantics (and
the paper definitions where alloy documents a choice), used to check alloy's policies.

  merge_reference.py write DIR   writes DIR/merge_inputs_<dtype>.safetensors (inputs),
                                 DIR/merge_expected_<dtype>.safetensors (results, F64) and
                                 DIR/merge_cases.json (method, parameters, tensor names)

Computation: inputs are read as float32 (exact from f16/bf16); task vectors are float32
differences, as in alloy, so that magnitude ranks agree exactly; everything after that is float64.
Random masks use alloy's documented counter-based generator (re-implemented here).
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_numpy as st  # noqa: E402

M64 = (1 << 64) - 1


def mix64(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * 0x100000001B3) & M64
    return h


def stream_key(seed, name, model):
    inner = int(mix64(np.uint64(seed ^ 0x9E3779B97F4A7C15)))
    outer = int(mix64(np.uint64(inner ^ fnv1a64(name))))
    return (outer + model * 0x9E3779B97F4A7C15) & M64


def uniform01(key, counters):
    counters = np.asarray(counters, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = mix64(np.uint64(key) + (counters + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))
    return (bits >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)


def rank_order(magnitudes):
    """Indices in rank order: larger magnitude first, ties by lower index (stable)."""
    mags = np.where(np.isnan(magnitudes), np.inf, magnitudes).astype(np.float32)
    return np.argsort(-mags, kind="stable")


def band_mask(delta, first, last):
    flat = np.abs(delta.reshape(-1))
    order = rank_order(flat)
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[first:last]] = True
    return mask.reshape(delta.shape)


def l1_rescale(delta, mask):
    before = np.abs(delta.astype(np.float64)).sum()
    after = np.abs(delta.astype(np.float64) * mask).sum()
    if before < 1e-7 or after < 1e-7:
        return 1.0
    return before / after


def sparsify(method, delta, p, rescale, seed, name, model, rescale_by="l1"):
    """Returns (mask, scale) for one task vector (float32 delta). Rescaling matches the L1 norm
    of the whole task vector (mergekit's rescaled_masked_tensor), for every sparsification; DARE
    may instead divide by the density (rescale_by: density, the DARE paper's and older mergekit's)."""
    n = delta.size
    if method == "none" or p["density"] >= 1:
        return np.ones(delta.shape, dtype=bool), 1.0
    density = p["density"]
    if method == "random":
        u = uniform01(stream_key(seed, name, model), np.arange(n)).reshape(delta.shape)
        mask = u < np.float32(density)
        if not rescale:
            return mask, 1.0
        if rescale_by == "density":
            return mask, (1.0 / density if density > 0 else 0.0)
        return mask, l1_rescale(delta, mask)
    if method == "magnitude":
        mask = band_mask(delta, 0, int(density * n))
    elif method == "magnitude_outliers":
        target = int(density * n)
        top = int(p["gamma"] * n)
        bottom = n - target - top
        if bottom < 0:
            top += bottom
        mask = band_mask(delta, top, top + target)
    elif method == "magnitude_sampling":
        eps = p["epsilon"]
        rows = delta.shape[0] if delta.ndim >= 2 else 1
        flat = delta.reshape(rows, -1)
        length = flat.shape[1]
        key = stream_key(seed, name, model)
        mask = np.zeros(flat.shape, dtype=bool)
        for r in range(rows):
            mags = np.abs(flat[r]).astype(np.float32)
            order = np.argsort(mags, kind="stable")  # ascending, ties by position
            position = np.arange(length) / (length - 1) if length > 1 else np.full(length, 0.5)
            prob = ((density - eps) + position * 2 * eps).astype(np.float32)
            index = r * length + order
            mask[r, order] = uniform01(key, index) < prob
        mask = mask.reshape(delta.shape)
    else:
        raise ValueError(method)
    return mask, (l1_rescale(delta, mask) if rescale else 1.0)


TASK_VECTOR = {
    # name: (sparsification, consensus, default normalize, default rescale)
    "task_arithmetic": ("none", None, False, False),
    "ties": ("magnitude", "sum", True, False),
    "dare_linear": ("random", None, False, True),
    "dare_ties": ("random", "sum", False, True),
    "breadcrumbs": ("magnitude_outliers", None, False, False),
    "breadcrumbs_ties": ("magnitude_outliers", "sum", False, False),
    "della": ("magnitude_sampling", "sum", True, True),
    "della_linear": ("magnitude_sampling", None, False, True),
}


def task_vector_merge(method, base, models, params, top, name):
    sparse, consensus, normalize, rescale = TASK_VECTOR[method]
    normalize = bool(top.get("normalize", normalize))
    rescale = bool(top.get("rescale", rescale))
    consensus = top.get("consensus", consensus) if consensus else None
    lam = top.get("lambda", 1.0)
    seed = int(top.get("seed", 0))
    b32 = base.astype(np.float32)
    weighted = []
    weights = []
    for i, (m, p) in enumerate(zip(models, params)):
        delta = (m.astype(np.float32) - b32).astype(np.float32)
        mask, scale = sparsify(sparse, delta, p, rescale, seed, name, i, top.get("rescale_by", "l1"))
        d = np.where(mask, delta.astype(np.float64) * scale, 0.0)
        weighted.append(p["weight"] * d)
        weights.append(p["weight"])
    e = np.stack(weighted)
    w = np.array(weights, dtype=np.float64).reshape((-1,) + (1,) * base.ndim)
    if consensus:
        if consensus == "sum":
            election = e.sum(axis=0)
        else:
            election = np.sign(e).sum(axis=0)
        majority = np.where(election >= 0, 1.0, -1.0)
        agree = np.sign(e) == majority
        mixed = (e * agree).sum(axis=0)
        divisor = (w * agree).sum(axis=0)
        divisor[divisor == 0] = 1
    else:
        mixed = e.sum(axis=0)
        divisor = np.full(base.shape, w.sum())
        divisor[np.abs(divisor) < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    result = b32.astype(np.float64) + lam * mixed
    if consensus == "sum":
        # A sum of signs that cancels exactly (e.g. 0.3 * 0.105 against 0.9 * 0.035) has no
        # majority: float32 and float64 rounding may elect either sign. Such elements are marked
        # NaN and skipped by the comparison.
        ambiguous = np.abs(election) <= 1e-6 * np.abs(e).max(axis=0)
        result[ambiguous & (np.abs(e).max(axis=0) > 0)] = np.nan
    return result


def linear(models, params, top):
    w = np.array([p["weight"] for p in params], dtype=np.float64)
    total = sum(wi * m.astype(np.float64) for wi, m in zip(w, models))
    if top.get("normalize", True):
        s = w.sum()
        total = total / (s if s != 0 else 1.0)
    return total


def magmax(base, models, top):
    b = base.astype(np.float32)
    deltas = np.stack([(m.astype(np.float32) - b) for m in models])
    chosen = np.take_along_axis(deltas, np.argmax(np.abs(deltas), axis=0)[None], axis=0)[0]
    return b.astype(np.float64) + top.get("lambda", 1.0) * chosen.astype(np.float64)


def slerp(base, models, top):
    t = top["t"]
    v0 = base.astype(np.float64)
    v1 = models[0].astype(np.float64)
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    u0 = v0 / n0 if n0 > 1e-8 else v0
    u1 = v1 / n1 if n1 > 1e-8 else v1
    dot = np.sum(u0 * u1)
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta = np.arccos(dot)
    return np.sin(theta * (1 - t)) / np.sin(theta) * v0 + np.sin(theta * t) / np.sin(theta) * v1


def nearswap(base, models, top):
    # mergekit's nearswap.py, in float32 as alloy computes it.
    a = base.astype(np.float32)
    b = models[0].astype(np.float32)
    t = np.float32(top["t"])
    weight = np.clip(t / np.maximum(np.abs(a - b), np.float32(1e-6)), 0, 1).astype(np.float32)
    return (weight * b + (np.float32(1) - weight) * a).astype(np.float64)


def model_stock(base, models):
    w0 = base.astype(np.float64).reshape(-1)
    ws = [m.astype(np.float64).reshape(-1) for m in models]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            norms = np.linalg.norm(offsets[i]) * np.linalg.norm(offsets[j])
            cosines.append(np.clip(np.dot(offsets[i], offsets[j]) / max(norms, 1e-6), -1, 1))
    c = np.mean(cosines)
    n = len(ws)
    t = 0.0 if abs(1 + (n - 1) * c) < 1e-6 else n * c / (1 + (n - 1) * c)
    return (t * (sum(ws) / n) + (1 - t) * w0).reshape(base.shape)


def model_stock_filter_wise(base, models):
    # mergekit's filter_wise: one cosine and one t per row along the last axis.
    w0 = base.astype(np.float64)
    w0 = w0.reshape(1, -1) if w0.ndim < 2 else w0
    ws = [m.astype(np.float64).reshape(w0.shape) for m in models]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            norms = np.linalg.norm(offsets[i], axis=-1) * np.linalg.norm(offsets[j], axis=-1)
            cosines.append(np.clip((offsets[i] * offsets[j]).sum(-1) / np.maximum(norms, 1e-6), -1, 1))
    c = np.mean(cosines, axis=0)[..., None]
    n = len(ws)
    denominator = 1 + (n - 1) * c
    t = np.where(np.abs(denominator) < 1e-6, 0.0, n * c / np.where(denominator == 0, 1, denominator))
    return (t * (sum(ws) / n) + (1 - t) * w0).reshape(base.shape)


def nuslerp(base, models, params, top):
    # mergekit's nuslerp.py: along the last axis (transposed for row_wise), or flattened.
    w0, w1 = params[0]["weight"], params[1]["weight"]
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    v0, v1 = models[0].astype(np.float64), models[1].astype(np.float64)
    if base is not None:
        v0, v1 = v0 - base, v1 - base
    shape = v0.shape
    flatten = top.get("nuslerp_flatten", 1)
    row_wise = top.get("nuslerp_row_wise", 0) and v0.ndim >= 2
    if flatten or v0.ndim < 2:
        v0, v1 = v0.reshape(1, -1), v1.reshape(1, -1)
    elif row_wise:
        v0, v1 = np.swapaxes(v0, 0, -1), np.swapaxes(v1, 0, -1)
    u0 = v0 / np.maximum(np.linalg.norm(v0, axis=-1, keepdims=True), 1e-7)
    u1 = v1 / np.maximum(np.linalg.norm(v1, axis=-1, keepdims=True), 1e-7)
    theta = np.arccos(np.clip((u0 * u1).sum(-1, keepdims=True), -1, 1))
    sin = np.sin(theta)
    colinear = np.abs(sin) < 1e-8
    safe = np.where(colinear, 1.0, sin)
    res = np.where(colinear, (1 - t) * v0 + t * v1, (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / safe)
    if row_wise and not flatten:
        res = np.swapaxes(res, 0, -1)
    res = res.reshape(shape)
    return res + base if base is not None else res


def multislerp(base, models, params, top):
    # mergekit's multislerp.py, step by step on the tensors.
    if len(models) == 1:
        return models[0].astype(np.float64)
    eps = top.get("eps", 1e-8)
    x = np.stack([m.astype(np.float64).reshape(-1) for m in models])
    if base is not None:
        x = x - base.reshape(-1)
    w = np.array([p["weight"] for p in params], dtype=np.float64)
    if top.get("normalize_weights", 1):
        w = w / w.sum()
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    units = x / (norms + eps)
    mean = (units * w[:, None]).sum(0)
    mean_norm = np.linalg.norm(mean)
    if mean_norm < eps:
        res = w[0] * x[0] + w[1] * x[1]
    else:
        mean = mean / mean_norm
        dots = (units * mean).sum(-1, keepdims=True)
        tangent = ((units - dots * mean) * w[:, None]).sum(0)
        tn = np.linalg.norm(tangent) + eps
        res = (mean * np.cos(tn) + tangent * (np.sin(tn) / tn)) * (norms[:, 0] * w).sum()
    res = res.reshape(models[0].shape)
    return res + base if base is not None else res


def karcher(base, models, top):
    # mergekit's karcher.py: every input (the base too) with equal weights, iterated on tensors.
    tensors = ([base] if base is not None else []) + list(models)
    max_iter, tol = int(top.get("max_iter", 10)), top.get("tol", 1e-5)
    flat = [t.astype(np.float64).reshape(-1) for t in tensors]
    if len(flat) == 1:
        return flat[0].reshape(models[0].shape)
    alphas = [1.0 / len(flat)] * len(flat)
    norms = [np.linalg.norm(f) for f in flat]
    units = [f / n if n != 0 else np.zeros_like(f) for f, n in zip(flat, norms)]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return np.zeros(models[0].shape)
    a = np.array([alphas[i] for i in valid])
    a = a / a.sum()
    vu = [units[i] for i in valid]
    u = sum(ai * ui for ai, ui in zip(a, vu))
    nu = np.linalg.norm(u)
    u = vu[0].copy() if nu < tol else u / nu
    for _ in range(max_iter):
        T = np.zeros_like(u)
        for ai, ui in zip(a, vu):
            dot = np.clip(np.dot(u, ui), -1, 1)
            theta = np.arccos(dot)
            if theta < tol:
                continue
            T += ai * (theta / np.sin(theta)) * (ui - dot * u)
        nt = np.linalg.norm(T)
        if nt < tol:
            break
        u = np.cos(nt) * u + np.sin(nt) * (T / nt)
        un = np.linalg.norm(u)
        if un > tol:
            u = u / un
    return (sum(al * n for al, n in zip(alphas, norms)) * u).reshape(models[0].shape)


def welford_variance32(deltas):
    # The variance that ranks SCE's entries, in float32 by Welford's update (alloy's documented
    # definition, so that the ranks agree exactly; torch.var computes the same quantity).
    mean = np.zeros(deltas.shape[1:], dtype=np.float32)
    squares = np.zeros(deltas.shape[1:], dtype=np.float32)
    for i, d in enumerate(deltas):
        delta = (d - mean).astype(np.float32)
        mean = (mean + delta / np.float32(i + 1)).astype(np.float32)
        squares = (squares + delta * (d - mean)).astype(np.float32)
    return (squares / np.float32(len(deltas))).astype(np.float32)


def sce(base, models, top):
    # mergekit's sce.py: select by variance, weight by mean square, erase by the sum's sign.
    b32 = base.astype(np.float32)
    deltas = np.stack([(m.astype(np.float32) - b32) for m in models])
    topk = top.get("select_topk", 1.0)
    if topk < 1:
        mask = np.zeros(base.size, dtype=bool)
        if topk > 0:
            var = welford_variance32(deltas).reshape(-1)
            k = int(np.float32(np.count_nonzero(var)) * np.float32(topk))
            mask[np.argsort(-var, kind="stable")[:k]] = True
        deltas = deltas * mask.reshape(base.shape)
    d = deltas.astype(np.float64)
    weights = (d ** 2).reshape(len(models), -1).mean(-1)
    total = weights.sum()
    weights = np.full(len(models), 1.0 / len(models)) if abs(total) < 1e-6 else weights / total
    # The election sums the float32 task vectors in float32, in model order, as alloy documents:
    # a sum that cancels exactly then elects + on both sides.
    election = np.zeros(base.shape, dtype=np.float32)
    for delta in deltas:
        election = (election + delta).astype(np.float32)
    majority = np.where(election >= 0, 1.0, -1.0)
    agree = np.sign(d) == majority
    ew = weights.reshape((-1,) + (1,) * base.ndim) * agree
    return b32.astype(np.float64) + (d * ew).sum(0) / np.maximum(ew.sum(0), 1e-6)


def ram(base, models, top, boost):
    # mergekit's ram.py (ram, ramplus_tl).
    eps = top.get("epsilon", 1e-5)
    b32 = base.astype(np.float32)
    tv = np.stack([(m.astype(np.float32) - b32) for m in models]).reshape(len(models), -1)
    nonzero = np.abs(tv) > np.float32(eps)
    count = nonzero.sum(0, keepdims=True)
    overlap, unique = count > 1, count == 1
    lam = np.ones((len(models), 1))
    if boost:
        r, alpha = top.get("r", 0.1), top.get("alpha", 0.2)
        shared = (nonzero & overlap).sum(1)
        only = (nonzero & unique).sum(1)
        lam = (1 + r * np.clip(shared / np.maximum(only, eps), 0, alpha))[:, None]
    tz = tv.astype(np.float64) * nonzero
    merged = (tz * unique * lam + tz * overlap / np.maximum(count, 1)).sum(0)
    return b32.astype(np.float64) + merged.reshape(base.shape)


def arcee_fusion(base, models):
    # mergekit's arcee_fusion.py, with exact quartiles (mergekit samples a million elements of
    # larger tensors).
    b, m = base.astype(np.float64), models[0].astype(np.float64)
    b2, m2 = (b.reshape(1, -1), m.reshape(1, -1)) if b.ndim < 2 else (b, m)

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(m2) + 1e-8, softmax(b2) + 1e-8
    kl = np.maximum((p * np.log(p / q)).sum(-1, keepdims=True), 0).astype(np.float32)
    diff = np.abs(models[0].astype(np.float32) - base.astype(np.float32)).reshape(b2.shape)
    importance = (diff * kl).astype(np.float32).reshape(-1)
    ordered = np.sort(importance)
    n = ordered.size
    q1, median, q3 = (ordered[int(f * (n - 1))] for f in (0.25, 0.5, 0.75))
    threshold = np.float32(median + np.float32(1.5) * np.float32(q3 - q1))
    keep = (importance >= threshold).reshape(base.shape)
    return b + (m - b) * keep


def expected(case, base, models):
    method, top, params = case["method"], case["parameters"], case["model_parameters"]
    full = [dict({"weight": 1.0, "density": 1.0, "gamma": 0.01, "epsilon": 0.15}, **p) for p in params]
    if method == "linear":
        return linear(models, full, top)
    if method in TASK_VECTOR:
        return task_vector_merge(method, base, models, full, top, case["tensor"])
    if method == "magmax":
        return magmax(base, models, top)
    if method == "slerp":
        return slerp(base, models, top)
    if method == "model_stock":
        return model_stock_filter_wise(base, models) if top.get("filter_wise") else model_stock(base, models)
    origin = None if case.get("no_base") else base
    if method == "nuslerp":
        return nuslerp(origin, models, full, top)
    if method == "multislerp":
        return multislerp(origin, models, full, top)
    if method == "karcher":
        return karcher(origin, models, top)
    if method == "sce":
        return sce(base, models, top)
    if method in ("ram", "ramplus_tl"):
        return ram(base, models, top, method == "ramplus_tl")
    if method == "arcee_fusion":
        return arcee_fusion(base, models)
    if method == "nearswap":
        return nearswap(base, models, top)
    if method == "passthrough":
        return models[0].astype(np.float64) * params[0].get("scale", 1.0)
    raise ValueError(method)


def cases():
    w3 = [{"weight": 0.5}, {"weight": 0.3}, {"weight": 0.9}]
    out = [
        ("linear", {}, w3),
        ("linear", {"normalize": 0}, w3),
        ("task_arithmetic", {"lambda": 0.8}, w3),
        ("ties", {}, [dict(p, density=0.4) for p in w3]),
        ("ties", {"consensus": "count", "lambda": 1.3}, [dict(p, density=0.6) for p in w3]),
        ("ties", {"normalize": 0, "rescale": 1}, [dict(p, density=0.25) for p in w3]),
        ("dare_linear", {"seed": 7}, [dict(p, density=0.5) for p in w3]),
        ("dare_linear", {"seed": 3, "rescale": 0}, [dict(p, density=0.7) for p in w3]),
        ("dare_linear", {"seed": 5, "rescale_by": "density"}, [dict(p, density=0.6) for p in w3]),
        ("dare_ties", {"seed": 11, "normalize": 1}, [dict(p, density=0.3) for p in w3]),
        ("breadcrumbs", {}, [dict(p, density=0.8, gamma=0.05) for p in w3]),
        ("breadcrumbs_ties", {"rescale": 1}, [dict(p, density=0.6, gamma=0.3) for p in w3]),
        ("della", {"seed": 5}, [dict(p, density=0.5, epsilon=0.1) for p in w3]),
        ("della_linear", {"seed": 9, "lambda": 0.7}, [dict(p, density=0.4, epsilon=0.2) for p in w3]),
        ("magmax", {"lambda": 0.9}, [{}, {}, {}]),
        ("slerp", {"t": 0.3}, [{}]),
        ("model_stock", {}, [{}, {}, {}]),
        ("nearswap", {"t": 0.002}, [{}]),
        ("passthrough", {}, [{"scale": 0.7}]),
        ("model_stock", {"filter_wise": 1}, [{}, {}, {}]),
        ("nuslerp", {}, [{"weight": 0.4}, {"weight": 0.9}]),
        ("nuslerp", {"nuslerp_flatten": 0}, [{"weight": 1.0}, {"weight": 0.5}], "no_base"),
        ("nuslerp", {"nuslerp_flatten": 0, "nuslerp_row_wise": 1}, [{"weight": 0.3}, {"weight": 0.7}]),
        ("multislerp", {}, w3),
        ("multislerp", {"normalize_weights": 0}, [{"weight": 0.6}, {"weight": 0.5}], "no_base"),
        ("karcher", {}, [{}, {}, {}], "no_base"),
        ("karcher", {"max_iter": 3}, [{}, {}]),
        ("sce", {}, [{}, {}, {}]),
        ("sce", {"select_topk": 0.3}, [{}, {}, {}]),
        ("ram", {}, [{}, {}, {}]),
        ("ramplus_tl", {"r": 0.5, "alpha": 0.4}, [{}, {}, {}]),
        ("arcee_fusion", {}, [{}]),
    ]
    return out


def quantize(values, dtype_name):
    if dtype_name == "F32":
        return values.astype(np.float32), values.astype(np.float32)
    if dtype_name == "F16":
        q = values.astype(np.float16)
        return q, q.astype(np.float32)
    bits = st.bf16_bits_from_f32(values.astype(np.float32))
    return bits, st.f32_from_bf16_bits(bits)


def write(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(2025)
    manifest = []
    shapes = [(37, 53), (1000,), (4, 6, 5), (3, 1)]
    for dtype_name in ("F32", "BF16", "F16"):
        inputs, results = [], []
        for c, (method, top, params, *flags) in enumerate(cases()):
            for s, shape in enumerate(shapes):
                name = "case%d.shape%d" % (c, s)
                base = rng.normal(0, 1, size=shape)
                models = [base + rng.normal(0, 0.05, size=shape) * rng.choice([0.5, 1, 2]) for _ in params]
                if method in ("ram", "ramplus_tl"):
                    for m in models:  # sparse changes, so that entries are unique, shared or untouched
                        untouched = rng.random(shape) < 0.6
                        m[untouched] = base[untouched]
                if method == "slerp" and s == 3:
                    models = [base * 1.0001]  # nearly parallel: the linear branch
                if s == 0 and len(models) > 1:
                    # equal magnitudes: ties the selection must break by position
                    models[1].reshape(-1)[::7] = base.reshape(-1)[::7] + 0.0625
                    models[0].reshape(-1)[::5] = base.reshape(-1)[::5] - 0.0625
                stored_base, base32 = quantize(base, dtype_name)
                stored_models = [quantize(m, dtype_name) for m in models]
                inputs.append((name + ".base", dtype_name, stored_base))
                for j, (stored, _) in enumerate(stored_models):
                    inputs.append((name + ".model%d" % j, dtype_name, stored))
                case = {"tensor": name, "method": method, "parameters": top, "model_parameters": params,
                        "dtype": dtype_name, "models": len(models), "no_base": "no_base" in flags}
                result = expected(case, base32, [m32 for _, m32 in stored_models])
                results.append((name, "F64", np.asarray(result, dtype=np.float64)))
                manifest.append(case)
        st.write(os.path.join(out_dir, "merge_inputs_%s.safetensors" % dtype_name), inputs)
        st.write(os.path.join(out_dir, "merge_expected_%s.safetensors" % dtype_name), results)
    with open(os.path.join(out_dir, "merge_cases.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print("wrote %d merge reference cases to %s" % (len(manifest), out_dir))


if __name__ == "__main__":
    {"write": write}[sys.argv[1]](sys.argv[2])
