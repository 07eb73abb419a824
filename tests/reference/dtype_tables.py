"""Writes reference tables for alloy's 16-bit float conversions, computed by NumPy (binary16) and
PyTorch (bfloat16) rather than by alloy's own integer code.

Usage: dtype_tables.py OUTPUT_DIR. Files are little-endian raw arrays:
  f16_to_f32.bin    all 65,536 binary16 patterns -> float32 bits (uint32)
  bf16_to_f32.bin   all 65,536 bfloat16 patterns -> float32 bits (uint32)
  f32_inputs.bin    float32 bit patterns (uint32): around every 16-bit value (exact, tie points,
                    one ulp either side of the ties), edge cases, and random bit patterns
  f32_to_f16.bin    those inputs rounded to binary16 by NumPy (uint16)
  f32_to_bf16.bin   those inputs rounded to bfloat16 by PyTorch (uint16)
"""

import os
import sys

import numpy as np
import torch


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    patterns = np.arange(65536, dtype=np.uint32).astype(np.uint16)

    f16_as_f32 = patterns.view(np.float16).astype(np.float32)
    f16_as_f32.view(np.uint32).tofile(os.path.join(out_dir, "f16_to_f32.bin"))

    bf16_as_f32 = torch.from_numpy(patterns.view(np.int16).copy()).view(torch.bfloat16).float()
    bf16_as_f32.numpy().view(np.uint32).tofile(os.path.join(out_dir, "bf16_to_f32.bin"))

    # Inputs near every binary16 value: the value, the midpoint to the next value up, and the
    # floats just below and above that midpoint.
    with np.errstate(over="ignore", invalid="ignore"):
        upper = np.nextafter(f16_as_f32.astype(np.float16), np.float16(np.inf)).astype(np.float32)
    finite = np.isfinite(f16_as_f32) & np.isfinite(upper)
    mid16 = ((f16_as_f32[finite].astype(np.float64) + upper[finite].astype(np.float64)) / 2).astype(np.float32)
    # Inputs near every bfloat16 value: bits with the low half 0, 0x8000 (tie), 0x7fff, 0x8001.
    hi = patterns.astype(np.uint32) << 16
    near_bf16 = np.concatenate([hi, hi | 0x8000, hi | 0x7FFF, hi | 0x8001]).view(np.float32)
    rng = np.random.default_rng(20261124)
    random_bits = rng.integers(0, 2**32, size=1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
    edges = np.array([0.0, -0.0, 65504.0, 65519.996, 65520.0, 65536.0, 1e-8, 2.0**-24, 2.0**-25,
                      1.5 * 2.0**-25, 2.0**-14, 3.3895314e38, 3.4028235e38, np.inf, -np.inf],
                     dtype=np.float32)
    inputs = np.concatenate([f16_as_f32, mid16, np.nextafter(mid16, np.float32(np.inf)),
                             np.nextafter(mid16, np.float32(-np.inf)), near_bf16, random_bits,
                             edges]).astype(np.float32)
    inputs.view(np.uint32).tofile(os.path.join(out_dir, "f32_inputs.bin"))

    with np.errstate(over="ignore", invalid="ignore"):
        inputs.astype(np.float16).view(np.uint16).tofile(os.path.join(out_dir, "f32_to_f16.bin"))
    as_bf16 = torch.from_numpy(inputs.copy()).to(torch.bfloat16).view(torch.int16).numpy()
    as_bf16.view(np.uint16).tofile(os.path.join(out_dir, "f32_to_bf16.bin"))
    print("wrote %d conversion inputs to %s" % (inputs.size, out_dir))


if __name__ == "__main__":
    main(sys.argv[1])
