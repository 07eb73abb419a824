#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/corpus/<target>/), independently of alloy's writer.

    python3 fuzz/make_seeds.py

Seeds are small valid inputs of every shape the parsers accept, so that mutations start near the
interesting boundaries: safetensors files of each dtype, rank 0 to 3, empty tensors, metadata;
indexes with one and several shards; every YAML config in docs/cli.md plus mergekit's own forms.
"""
import json
import os
import re
import struct

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape). Data bytes are a counting pattern."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape in tensors:
        count = 1
        for d in shape:
            count *= d
        size = count * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + size]}
        data += bytes((i * 7 + 1) & 0xFF for i in range(size))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write(target, name, content):
    folder = os.path.join(here, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())


def main():
    write("safetensors_header", "empty", safetensors([]))
    write("safetensors_header", "metadata_only", safetensors([], {"format": "pt"}))
    write("safetensors_header", "f32_matrix", safetensors([("w", "F32", [2, 3])], {"format": "pt"}))
    write("safetensors_header", "scalar_and_empty", safetensors([("s", "F64", []), ("e", "F16", [0, 4])]))
    write("safetensors_header", "every_dtype",
          safetensors([("t.%s" % d.lower(), d, [3]) for d in DTYPE_BYTES]))
    write("safetensors_header", "layers", safetensors(
        [("model.layers.%d.%s" % (i, p), "BF16", [4, 2] if p == "weight" else [4])
         for i in range(3) for p in ("weight", "bias")]))
    write("safetensors_header", "rank3_unicode", safetensors([("ŵ€ight", "F32", [1, 2, 2])], {"k": "vé"}))

    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    write("safetensors_index", "one_shard",
          json.dumps({"metadata": {"total_size": 24}, "weight_map": {"w": "model.safetensors"}}))
    write("safetensors_index", "two_shards", json.dumps({
        "metadata": {"total_size": 1024},
        "weight_map": {"model.layers.%d.weight" % i: shards[i % 2] for i in range(6)}}, indent=2))
    write("safetensors_index", "subfolder", json.dumps({"weight_map": {"a": "shards/a.safetensors"}}))
    write("safetensors_index", "no_metadata", json.dumps({"weight_map": {"a": shards[0], "b": shards[0]}}))

    with open(os.path.join(root, "docs", "cli.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```yaml\n(.*?)```", f.read(), re.S)
    for i, block in enumerate(blocks):
        write("merge_config", "cli_md_%02d.yml" % i, block)
    write("merge_config", "expanded_references.yml", """merge_method: ties
base_model:
  model: {path: ./base}
models:
  - model:
      model: {path: ./math}
      lora: {path: ./math-lora}
    parameters:
      weight: [{filter: self_attn, value: [0, 0.5, 1]}, {value: 1.0}]
      density: 0.4
parameters: {normalize: true, int8_mask: true}
dtype: float16
out_dtype: bfloat16
tokenizer_source: base
""")
    write("merge_config", "slerp.yml", """merge_method: slerp
base_model: ./a
models:
  - model: ./a
  - model: ./b
parameters:
  t:
    - filter: mlp
      value: [0, 0.5, 0.3, 0.7, 1]
    - value: 0.5
""")
    write("merge_config", "anchors.yml", """merge_method: linear
models:
  - model: ./a+./adapter
    parameters: &p {weight: 0.5}
  - model: ./b
    parameters: *p
""")


if __name__ == "__main__":
    main()
