"""Independent NumPy implementations of OPCM (Tang et al. 2025; fusion_bench's
`method/opcm/opcm.py`) and DOP (fusion_bench's `method/dop/dop.py`), used to check alloy's
opcm_merger and dop_merger (alloy/continual/opcm.hpp, dop.hpp).

  continual_reference.py write DIR   writes DIR/opcm_alpha<alpha>.safetensors for each alpha,
                                     DIR/dop_<case>.safetensors for each DOP setting and
                                     DIR/magmax_sequence.safetensors (MagMax over every task seen):
                                     initial.<name>, task<t>.<name> (inputs, F32) and
                                     expected<t>.<name> (G after task t, F32), t = 1..TASKS;
                                     and DIR/lora_product.safetensors (LoRA factors merged by their
                                     products, alloy/continual/lora_product.hpp): see lora_case

LoRA products: each pair's update scale B A; the mean of several LoRAs' products taken back to
rank r by the truncated SVD, U_r S_r V_r^T (Eckart-Young), and the share of sum S^2 it keeps.

fusion_bench's step for task t >= 2: for every linear weight, U S V^T = svd(W - W0) (full),
r = argmax(cumsum(S) / sum(S) > alpha), P = U^T (W_t - W0) V with its diagonal and P[:r, :r]
zeroed, W = W0 + lambda (W - W0) + U P V^T; every other parameter W = W0 + lambda (W - W0) +
(W_t - W0); then the whole model is rescaled about W0 to the mean norm of the task vectors seen
(one norm over every tensor), lambda = |W - W0| / mean. Here in float64, G kept in float32
between tasks (as the model is).

DOP's step for task t >= 2, old = G - W0, new = W_t - W0: for every linear weight, for each side
U S V^T = svd(side), k = searchsorted(cumsum(S) / sum(S), eps) (left), and the loss
|diag(s) U_k^T (X - side)|^2 + |(X - side) V_k diag(s)|^2 ('uv'; 'u' and 'v' keep one term);
X starts at the average and takes `steps` Adam steps (torch's defaults) on w0 L0 + w1 L1, where
(w0, w1) start at (alpha, 1 - alpha) and, with MGDA, follow beta w + (1 - beta) (gamma, 1 - gamma),
gamma the two-task min-norm weight of the gradients divided by their losses. Other parameters:
the average of old and new. G = W0 + X.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_numpy as st  # noqa: E402

TASKS = 5
SHAPES = {"encoder.fc.weight": (12, 8), "encoder.proj.weight": (6, 10), "head.weight": (9, 9),
          "encoder.fc.bias": (12,), "norm.weight": (9,)}


def opcm(initial, tasks, alpha):
    names = list(initial)
    base = {n: initial[n].astype(np.float64) for n in names}
    merged = None
    norms, lam, steps = [], 1.0, []
    for t, task in enumerate(tasks):
        tau = {n: task[n].astype(np.float64) - base[n] for n in names}
        norms.append(np.sqrt(sum(np.sum(tau[n] ** 2) for n in names)))
        if t == 0:
            merged = {n: task[n].astype(np.float32) for n in names}
            steps.append(merged)
            continue
        avg = np.mean(norms)
        new = {}
        for n in names:
            delta = merged[n].astype(np.float64) - base[n]
            if delta.ndim == 2:
                u, s, vh = np.linalg.svd(delta, full_matrices=True)
                ratio = np.cumsum(s) / np.sum(s)
                r = int(np.argmax(ratio > alpha))
                p = u.T @ tau[n] @ vh.T
                k = min(p.shape)
                p[np.arange(k), np.arange(k)] = 0
                p[:r, :r] = 0
                new[n] = lam * delta + u @ p @ vh
            else:
                new[n] = lam * delta + tau[n]
        norm = np.sqrt(sum(np.sum(new[n] ** 2) for n in names))
        lam = norm / avg
        merged = {n: (base[n] + new[n] * (avg / norm)).astype(np.float32) for n in names}
        steps.append(merged)
    return steps


def min_norm_weight(g00, g01, g11):
    if g01 >= g00:
        return 0.999
    if g01 >= g11:
        return 0.001
    return (g11 - g01) / (g00 + g11 - 2 * g01)


def dop_matrix(old, new, o):
    sides = [old, new]
    terms = []
    for side in sides:
        u, s, vh = np.linalg.svd(side, full_matrices=True)
        k = int(np.searchsorted(np.cumsum(s) / np.sum(s), o["eps"], side="left"))
        terms.append((u[:, :k], s[:k], vh[:k].T))

    def loss_and_grad(x, i):
        u, s, v = terms[i]
        d = x - sides[i]
        loss, grad = 0.0, np.zeros_like(x)
        if o["space"] in ("uv", "u"):
            a = s[:, None] * (u.T @ d)
            loss += np.sum(a ** 2)
            grad += 2 * u @ (s[:, None] * a)
        if o["space"] in ("uv", "v"):
            b = (d @ v) * s[None, :]
            loss += np.sum(b ** 2)
            grad += 2 * (b * s[None, :]) @ v.T
        return loss, grad

    x = (old + new) / 2
    m, v2 = np.zeros_like(x), np.zeros_like(x)
    w = o["alpha"]
    for step in range(1, o["steps"] + 1):
        (l0, g0), (l1, g1) = loss_and_grad(x, 0), loss_and_grad(x, 1)
        if o["mgda"]:
            h0 = g0 / l0 if l0 > 0 else 0 * g0
            h1 = g1 / l1 if l1 > 0 else 0 * g1
            gamma = min_norm_weight(np.sum(h0 * h0), np.sum(h0 * h1), np.sum(h1 * h1))
            w = o["beta"] * w + (1 - o["beta"]) * gamma if o["ema"] else gamma
        g = w * g0 + (1 - w) * g1
        m = 0.9 * m + 0.1 * g
        v2 = 0.999 * v2 + 0.001 * g * g
        b1, b2 = 1 - 0.9 ** step, 1 - 0.999 ** step
        x = x - o["lr"] / b1 * m / (np.sqrt(v2) / np.sqrt(b2) + 1e-8)
    return x


def dop(initial, tasks, o):
    base = {n: a.astype(np.float64) for n, a in initial.items()}
    merged, steps = None, []
    for t, task in enumerate(tasks):
        new = {n: task[n].astype(np.float64) - base[n] for n in base}
        if t == 0:
            merged = {n: task[n].astype(np.float32) for n in base}
        else:
            out = {}
            for n in base:
                old = merged[n].astype(np.float64) - base[n]
                out[n] = dop_matrix(old, new[n], o) if old.ndim == 2 else (old + new[n]) / 2
            merged = {n: (base[n] + out[n]).astype(np.float32) for n in base}
        steps.append(merged)
    return steps


def magmax_sequence(initial, tasks, scale):
    """fusion_bench's magmax_merge over the first t task vectors, for each t (from scratch)."""
    steps = []
    for t in range(1, len(tasks) + 1):
        merged = {}
        for n, base in initial.items():
            base = base.astype(np.float64)
            best = tasks[0][n].astype(np.float64) - base
            for task in tasks[1:t]:
                tau = task[n].astype(np.float64) - base
                best = np.where(np.abs(tau) >= np.abs(best), tau, best)
            merged[n] = (base + scale * best).astype(np.float32)
        steps.append(merged)
    return steps


DOP_CASES = {
    "default": {"alpha": 0.8, "steps": 200, "lr": 1e-4, "eps": 0.99999, "mgda": True, "ema": True, "beta": 0.999,
                "space": "uv"},
    "fixed_u": {"alpha": 0.6, "steps": 50, "lr": 1e-3, "eps": 0.9, "mgda": False, "ema": False, "beta": 0.999,
                "space": "u"},
    "mgda_v": {"alpha": 0.5, "steps": 80, "lr": 5e-4, "eps": 0.95, "mgda": True, "ema": False, "beta": 0.999,
               "space": "v"},
}


LORA_SHAPES = {"layer.q_proj": (2, 8, 6), "layer.fc1": (4, 3, 7)}  # module: (rank, in, out); fc1 has rank > min(in, out)
LORA_SCALE = 2.0
LORA_TASKS = 3


def lora_case(path, rng):
    """factors<t>.<module>.lora_A/B.weight (F32, t = 1..LORA_TASKS); product<t>.<module>.weight, each
    one's scale B A (F32); merged.<module>.weight, the mean of the products (F64 then F32), and
    truncated.<module>.weight, its best rank-r approximation (F32); metadata kept: the share of the
    merged products' sum of squared singular values the truncation keeps."""
    tensors, merged = [], {m: 0.0 for m in LORA_SHAPES}
    for t in range(1, LORA_TASKS + 1):
        for m, (r, i, o) in LORA_SHAPES.items():
            a = rng.standard_normal((r, i)).astype(np.float32)
            b = (0.5 * rng.standard_normal((o, r))).astype(np.float32)
            product = LORA_SCALE * (b.astype(np.float64) @ a.astype(np.float64))
            tensors += [("factors%d.%s.lora_A.weight" % (t, m), "F32", a), ("factors%d.%s.lora_B.weight" % (t, m), "F32", b),
                        ("product%d.%s.weight" % (t, m), "F32", product.astype(np.float32))]
            merged[m] = merged[m] + product.astype(np.float32).astype(np.float64) / LORA_TASKS
    kept = total = 0.0
    for m, (r, i, o) in LORA_SHAPES.items():
        u, s, vt = np.linalg.svd(merged[m])
        k = min(r, len(s))
        truncated = (u[:, :k] * s[:k]) @ vt[:k]
        kept += float(np.sum(s[:k] ** 2))
        total += float(np.sum(s ** 2))
        tensors += [("merged.%s.weight" % m, "F32", merged[m].astype(np.float32)),
                    ("truncated.%s.weight" % m, "F32", truncated.astype(np.float32))]
    st.write(path, tensors, {"scale": str(LORA_SCALE), "kept": repr(kept / total)})


def write_case(path, initial, tasks, steps, metadata):
    tensors = [("initial." + n, "F32", initial[n]) for n in SHAPES]
    for t in range(TASKS):
        tensors += [("task%d.%s" % (t + 1, n), "F32", tasks[t][n]) for n in SHAPES]
        tensors += [("expected%d.%s" % (t + 1, n), "F32", steps[t][n]) for n in SHAPES]
    st.write(path, tensors, metadata)


def main():
    if len(sys.argv) != 3 or sys.argv[1] != "write":
        sys.exit("usage: continual_reference.py write DIR")
    out = sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    initial = {n: (0.1 * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}
    # Task vectors sharing a low-rank part, as fine-tunings of one model do, so that the
    # projection removes something, plus their own noise and scale.
    shared = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    tasks = []
    for t in range(TASKS):
        scale = 0.01 * (1 + 0.5 * t)
        tasks.append({n: (initial[n] + scale * (0.7 * shared[n] + rng.standard_normal(s))).astype(np.float32)
                      for n, s in SHAPES.items()})
    for alpha in (0.5, 0.8):
        write_case(os.path.join(out, "opcm_alpha%g.safetensors" % alpha), initial, tasks, opcm(initial, tasks, alpha),
                   {"alpha": str(alpha), "tasks": str(TASKS)})
    write_case(os.path.join(out, "magmax_sequence.safetensors"), initial, tasks, magmax_sequence(initial, tasks, 0.5),
               {"scaling_factor": "0.5"})
    lora_case(os.path.join(out, "lora_product.safetensors"), np.random.default_rng(11))
    for case, o in DOP_CASES.items():
        write_case(os.path.join(out, "dop_%s.safetensors" % case), initial, tasks, dop(initial, tasks, o),
                   {k: str(v) for k, v in o.items()})


if __name__ == "__main__":
    main()
