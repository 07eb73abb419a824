"""An independent safetensors reader and writer in NumPy, written from the format's specification
(https://github.com/huggingface/safetensors#format). Test reference only: alloy never uses it."""

import json
import struct

import numpy as np

# dtype name -> (numpy storage dtype, bytes per element). BF16 has no NumPy dtype: it is stored
# as uint16 bit patterns and converted explicitly.
DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"), "F8_E4M3": np.dtype("u1"), "F8_E5M2": np.dtype("u1"),
}


def bf16_bits_from_f32(values):
    """Round float32 values to bfloat16 bit patterns, nearest even (values here are finite)."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def f32_from_bf16_bits(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def write(path, tensors, metadata=None):
    """tensors: list of (name, dtype_name, numpy array already in that dtype's storage)."""
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    blobs = []
    for name, dtype_name, array in tensors:
        # np.ascontiguousarray would turn a 0-d scalar into shape (1,); keep the rank.
        array = np.array(array, dtype=DTYPES[dtype_name], order="C", copy=True)
        blob = array.tobytes()
        header[name] = {"dtype": dtype_name, "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for blob in blobs:
            out.write(blob)


def read(path):
    """Returns (tensors: dict name -> (dtype_name, array), metadata: dict), checking the layout."""
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    assert 8 + length <= len(data), "header runs past the end"
    assert length % 8 == 0, "header length %d is not a multiple of 8" % length
    header = json.loads(data[8:8 + length].decode("utf-8"))
    body = data[8 + length:]
    metadata = header.pop("__metadata__", {})
    tensors = {}
    spans = []
    for name, info in header.items():
        assert set(info) == {"dtype", "shape", "data_offsets"}, info
        begin, end = info["data_offsets"]
        dtype = DTYPES[info["dtype"]]
        count = int(np.prod(info["shape"], dtype=np.int64)) if info["shape"] else 1
        assert end - begin == count * dtype.itemsize, name
        array = np.frombuffer(body[begin:end], dtype=dtype).reshape(info["shape"])
        tensors[name] = (info["dtype"], array)
        spans.append((begin, end))
    spans.sort()
    position = 0
    for begin, end in spans:
        assert begin == position, "hole or overlap at %d" % begin
        position = end
    assert position == len(body), "bytes after the last tensor"
    return tensors, metadata


def as_float64(dtype_name, array):
    if dtype_name == "BF16":
        return f32_from_bf16_bits(array).astype(np.float64)
    return array.astype(np.float64)
