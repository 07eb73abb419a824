"""CLIP's forward pass written independently of alloy's C++ model: plain functional PyTorch over the
tensors of a Hugging Face-style folder (config.json + model.safetensors, read with the NumPy
safetensors reader of these tests), following transformers' CLIPModel. Checks the logits alloy
computed on the same inputs.

    clip_reference.py CASE_DIR      (CASE_DIR/model/{config.json,model.safetensors}, CASE_DIR/io.safetensors)
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import safetensors_numpy  # noqa: E402


def activation(x, name):
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return F.gelu(x)
    raise ValueError(f"unknown activation {name}")


def encoder(x, w, prefix, cfg, mask):
    heads = cfg["num_attention_heads"]
    eps = cfg.get("layer_norm_eps", 1e-5)
    width = x.shape[-1]
    head_dim = width // heads
    for layer in range(cfg["num_hidden_layers"]):
        p = f"{prefix}.encoder.layers.{layer}."
        h = F.layer_norm(x, (width,), w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], eps)
        q = F.linear(h, w[p + "self_attn.q_proj.weight"], w[p + "self_attn.q_proj.bias"])
        k = F.linear(h, w[p + "self_attn.k_proj.weight"], w[p + "self_attn.k_proj.bias"])
        v = F.linear(h, w[p + "self_attn.v_proj.weight"], w[p + "self_attn.v_proj.bias"])
        b, t, _ = q.shape
        q, k, v = (z.reshape(b, t, heads, head_dim).permute(0, 2, 1, 3) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        if mask is not None:
            scores = scores + mask
        attended = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(b, t, width)
        x = x + F.linear(attended, w[p + "self_attn.out_proj.weight"], w[p + "self_attn.out_proj.bias"])
        h = F.layer_norm(x, (width,), w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], eps)
        h = activation(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]), cfg.get("hidden_act", "quick_gelu"))
        x = x + F.linear(h, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
    return x


def image_features(pixels, w, cfg):
    eps = cfg.get("layer_norm_eps", 1e-5)
    patch = cfg["patch_size"]
    x = F.conv2d(pixels, w["vision_model.embeddings.patch_embedding.weight"], stride=patch)
    x = x.flatten(2).transpose(1, 2)
    cls = w["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + w["vision_model.embeddings.position_embedding.weight"]
    width = x.shape[-1]
    x = F.layer_norm(x, (width,), w["vision_model.pre_layrnorm.weight"], w["vision_model.pre_layrnorm.bias"], eps)
    x = encoder(x, w, "vision_model", cfg, None)
    pooled = F.layer_norm(x[:, 0], (width,), w["vision_model.post_layernorm.weight"],
                          w["vision_model.post_layernorm.bias"], eps)
    return pooled @ w["visual_projection.weight"].T


def text_features(ids, w, cfg):
    eps = cfg.get("layer_norm_eps", 1e-5)
    t = ids.shape[1]
    x = w["text_model.embeddings.token_embedding.weight"][ids] + w["text_model.embeddings.position_embedding.weight"][:t]
    mask = torch.full((t, t), float("-inf")).triu(1)
    x = encoder(x, w, "text_model", cfg, mask)
    width = x.shape[-1]
    x = F.layer_norm(x, (width,), w["text_model.final_layer_norm.weight"], w["text_model.final_layer_norm.bias"], eps)
    eos = cfg.get("eos_token_id", 49407)
    where = ids.argmax(-1) if eos == 2 else (ids == eos).int().argmax(-1)
    return x[torch.arange(x.shape[0]), where] @ w["text_projection.weight"].T


def main():
    case = Path(sys.argv[1])
    config = json.loads((case / "model" / "config.json").read_text())
    tensors, metadata = safetensors_numpy.read(case / "model" / "model.safetensors")
    assert metadata.get("format") == "pt", "transformers needs {'format': 'pt'} in the metadata"
    weights = {k: torch.from_numpy(safetensors_numpy.as_float64(t, a).astype(np.float32)) for k, (t, a) in tensors.items()}
    io = {k: a for k, (t, a) in safetensors_numpy.read(case / "io.safetensors")[0].items()}
    pixels = torch.from_numpy(np.array(io["pixels"], dtype=np.float32))
    ids = torch.from_numpy(np.array(io["ids"], dtype=np.int64))
    with torch.no_grad():
        images = F.normalize(image_features(pixels, weights, config["vision_config"]), dim=-1)
        texts = F.normalize(text_features(ids, weights, config["text_config"]), dim=-1)
        logits = weights["logit_scale"].exp() * images @ texts.T
    got = torch.from_numpy(np.array(io["logits"], dtype=np.float32))
    error = (logits - got).abs().max().item()
    print(f"clip_reference: logits {tuple(logits.shape)}, max |alloy - reference| = {error:.3g}")
    # f32 on both sides: agreement is about 1e-6 here, so 2e-5 catches a small slip (quick_gelu's
    # 1.702 written as 1.7 moves these logits by 1e-4) that transformers' 1e-4 would let through.
    if logits.shape != got.shape or not error <= 2e-5:
        print("clip_reference: alloy's CLIP disagrees with the functional reference", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
