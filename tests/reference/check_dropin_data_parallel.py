#!/usr/bin/env python3
"""Runs dropin_torch as one process and as two data-parallel ranks started the way torchrun starts
them without its agent (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT; rank 0 serves the
TCPStore), and checks that the two give the same mean accuracies up to the float order of the
all-reduce, that rank 1 prints nothing, and that a bad environment is refused by name.

    check_dropin_data_parallel.py DROPIN_TORCH DATASETS_DIR [ARGS...]
"""
import os
import re
import socket
import subprocess
import sys

LINE = re.compile(r"mean accuracy after the last task: fine-tuning only ([0-9.]+)%, alloy merging ([0-9.]+)%, "
                  r"alloy merging \+ PAM ([0-9.]+)%")
TOLERANCE = 1.0  # points of accuracy (10,000 test images: 100 of them)


def means(output, who):
    found = LINE.search(output)
    if not found:
        sys.exit(f"{who} printed no mean accuracies:\n{output}")
    return [float(v) for v in found.groups()]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    program, data, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
    command = [program, data] + extra
    base = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"]:
        base.pop(name, None)
    single = subprocess.run(command, env=base, capture_output=True, text=True, timeout=600)
    if single.returncode != 0:
        sys.exit(f"one process failed ({single.returncode}):\n{single.stderr}")
    one = means(single.stdout, "one process")

    port = str(free_port())
    ranks = []
    for rank in range(2):
        env = dict(base, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        ranks.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for process in ranks:
        try:
            outputs.append(process.communicate(timeout=600))
        except subprocess.TimeoutExpired:
            for other in ranks:
                other.kill()
            sys.exit("the two ranks did not finish in 600 s")
    for rank, process in enumerate(ranks):
        if process.returncode != 0:
            sys.exit(f"rank {rank} failed ({process.returncode}):\n{outputs[rank][1]}")
    two = means(outputs[0][0], "rank 0")
    if outputs[1][0].strip():
        sys.exit(f"rank 1 printed to stdout:\n{outputs[1][0]}")
    largest = max(abs(a - b) for a, b in zip(one, two))
    if largest > TOLERANCE:
        sys.exit(f"one process {one} and two ranks {two} differ by {largest:.1f} points (allowed {TOLERANCE})")

    bad = subprocess.run(command, env=dict(base, WORLD_SIZE="2", RANK="2", MASTER_PORT=port), capture_output=True, text=True,
                         timeout=60)
    if bad.returncode == 0 or "RANK='2' is not an integer in [0, 1]" not in bad.stderr:
        sys.exit(f"RANK outside the world was not refused by name ({bad.returncode}):\n{bad.stderr}")
    print(f"one process {one}, two ranks {two} (mean accuracies, %): within {largest:.1f} points; rank 1 silent; "
          "a bad RANK refused")


if __name__ == "__main__":
    main()
