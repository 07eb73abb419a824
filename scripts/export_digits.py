#!/usr/bin/env python3
"""Exports scikit-learn's 8x8 digits (the UCI optical digits shipped inside python3-sklearn; no
download) to DATASETS_DIR/digits.safetensors, in the layout prepare_datasets gives MNIST:
`images` U8 [1797, 8, 8] (sklearn's 0..16 intensities scaled to 0..255, rounded half up) and
`labels` I64 [1797], with the source and class names in the metadata. Idempotent: an existing
file from the same scikit-learn version is left alone.

    export_digits.py DATASETS_DIR
"""
import json
import os
import struct
import sys
import tempfile

import numpy as np
import sklearn
from sklearn.datasets import load_digits


def write_safetensors(path, tensors, metadata):
    """A plain safetensors writer: header JSON padded to 8 bytes, then the tensors in order."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, (dtype, array) in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    folder = os.path.dirname(path)
    with tempfile.NamedTemporaryFile(dir=folder, delete=False) as out:  # renamed when complete
        out.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
        out.flush()
        os.fsync(out.fileno())
    os.replace(out.name, path)


def main(datasets_dir):
    os.makedirs(datasets_dir, exist_ok=True)
    path = os.path.join(datasets_dir, "digits.safetensors")
    source = "scikit-learn %s load_digits" % sklearn.__version__
    if os.path.exists(path):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if json.loads(f.read(length)).get("__metadata__", {}).get("source") == source:
                return
    digits = load_digits()
    images = np.floor(digits.images * 255.0 / 16.0 + 0.5).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    assert images.shape == (1797, 8, 8) and images.max() <= 255 and set(labels) == set(range(10))
    write_safetensors(path, {"images": ("U8", images), "labels": ("I64", labels)},
                      {"source": source, "classes": json.dumps([str(d) for d in range(10)])})
    print("export_digits: wrote %d images to %s" % (len(labels), path))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: export_digits.py DATASETS_DIR")
    main(sys.argv[1])
