"""safetensors interoperability between alloy and an independent NumPy implementation.

  interop.py write DIR   writes files with the NumPy writer, and DIR/py_manifest.json describing
                         every tensor's dtype, shape and values, for alloy's reader to check
  interop.py check DIR   reads the files alloy wrote (described by DIR/cpp_manifest.json) with the
                         NumPy reader and checks them against the manifest
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_numpy as st  # noqa: E402


def sample_tensors(seed):
    rng = np.random.default_rng(seed)
    # Values on a 1/8 grid within +-16 are exact in every float dtype, so the manifest's decimal
    # numbers compare exactly.
    def grid(shape):
        return rng.integers(-128, 128, size=shape).astype(np.float64) / 8

    return [
        ("model.embed.weight", "F32", grid((7, 5)).astype(np.float32)),
        ("model.layers.0.attn.q_proj.weight", "BF16", st.bf16_bits_from_f32(grid((4, 6)))),
        ("model.layers.0.attn.k_proj.weight", "F16", grid((3, 3)).astype(np.float16)),
        ("model.layers.0.mlp.bias", "F64", grid((9,))),
        ("model.norm.scale", "F32", np.float32(2.5).reshape(())),
        ("model.empty", "F32", np.zeros((0, 4), dtype=np.float32)),
        ("model.position_ids", "I64", rng.integers(-2**40, 2**40, size=(2, 3), dtype=np.int64)),
        ("model.counts", "I32", rng.integers(-1000, 1000, size=(5,), dtype=np.int32)),
        ("model.small", "I16", rng.integers(-300, 300, size=(2, 2), dtype=np.int16)),
        ("model.tiny", "I8", rng.integers(-128, 128, size=(3,), dtype=np.int8)),
        ("model.bytes", "U8", rng.integers(0, 256, size=(2, 2, 2), dtype=np.uint8)),
        ("model.mask", "BOOL", rng.integers(0, 2, size=(6,)).astype(bool)),
        ("model.deep", "F32", grid((2, 1, 2, 1, 2)).astype(np.float32)),
    ]


def describe(tensors):
    manifest = {}
    for name, dtype_name, array in tensors:
        values = st.as_float64(dtype_name, array) if dtype_name in ("F32", "F64", "F16", "BF16") else array
        manifest[name] = {"dtype": dtype_name, "shape": list(array.shape),
                          "values": [v.item() if hasattr(v, "item") else v for v in np.ravel(values)]}
    return manifest


def write(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    manifest = {}
    tensors = sample_tensors(1)
    metadata = {"format": "pt", "written_by": "numpy reference"}
    st.write(os.path.join(out_dir, "py_single.safetensors"), tensors, metadata)
    manifest["py_single.safetensors"] = {"metadata": metadata, "tensors": describe(tensors)}

    # A sharded model folder as Hugging Face writes it: two shards and an index.
    folder = os.path.join(out_dir, "py_sharded")
    os.makedirs(folder, exist_ok=True)
    tensors = sample_tensors(2)
    halves = [tensors[:6], tensors[6:]]
    weight_map = {}
    for i, half in enumerate(halves):
        shard = "model-%05d-of-%05d.safetensors" % (i + 1, len(halves))
        st.write(os.path.join(folder, shard), half, {"format": "pt"})
        weight_map.update({name: shard for name, _, _ in half})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)
    manifest["py_sharded"] = {"metadata": {"format": "pt"}, "tensors": describe(tensors)}

    with open(os.path.join(out_dir, "py_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print("wrote NumPy reference files to %s" % out_dir)


def read_model(path):
    if os.path.isdir(path):
        index_path = os.path.join(path, "model.safetensors.index.json")
        if not os.path.exists(index_path):
            return st.read(os.path.join(path, "model.safetensors"))
        with open(index_path) as f:
            index = json.load(f)
        tensors, metadata = {}, {}
        for shard in sorted(set(index["weight_map"].values())):
            shard_tensors, metadata = st.read(os.path.join(path, shard))
            for name in shard_tensors:
                assert index["weight_map"][name] == shard, name
                assert name not in tensors, name
            tensors.update(shard_tensors)
        assert set(tensors) == set(index["weight_map"]), "index and shards disagree"
        total = sum(array.nbytes for _, array in tensors.values())
        assert index["metadata"]["total_size"] == total, (index["metadata"], total)
        return tensors, metadata
    return st.read(path)


def check(out_dir):
    with open(os.path.join(out_dir, "cpp_manifest.json")) as f:
        manifest = json.load(f)
    checked = 0
    for relative, expected in manifest.items():
        tensors, metadata = read_model(os.path.join(out_dir, relative))
        assert metadata == expected["metadata"], (relative, metadata, expected["metadata"])
        assert set(tensors) == set(expected["tensors"]), (relative, sorted(tensors))
        for name, info in expected["tensors"].items():
            dtype_name, array = tensors[name]
            assert dtype_name == info["dtype"], (relative, name, dtype_name)
            assert list(array.shape) == info["shape"], (relative, name, array.shape)
            values = st.as_float64(dtype_name, array) if dtype_name in ("F32", "F64", "F16", "BF16") else array
            want = np.array(info["values"], dtype=values.dtype if values.size else np.float64)
            assert np.array_equal(np.ravel(values), want), (relative, name, np.ravel(values), want)
            checked += 1
    assert checked > 0
    print("NumPy reader checked %d tensors written by alloy" % checked)


if __name__ == "__main__":
    {"write": write, "check": check}[sys.argv[1]](sys.argv[2])
