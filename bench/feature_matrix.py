"""Reads and writes the benches' f32 matrix files (lookalike-bench's feature cache format).

The format (bench/src/experiment/features.rs): b"LKFEAT01", then rows and dim as u64
little-endian, then the rows as little-endian f32. The mining experiment caches backbone
features in it, train_bench writes its inputs in it, and bench/index/data.py writes the index
benchmark's base and query vectors in it; bench/index/data.py, bench/index/peers.py and
bench/train/peer.py read it through here.
"""

import sys

import numpy as np

MAGIC = b"LKFEAT01"
HEADER_BYTES = len(MAGIC) + 16


def read(path):
    """The rows × dim float32 matrix in `path`; exits with a message if it is not one."""
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES or header[: len(MAGIC)] != MAGIC:
        sys.exit(f"{path} is not a feature matrix file")
    rows, dim = np.frombuffer(header[len(MAGIC) :], dtype="<u8")
    data = np.fromfile(path, dtype="<f4", offset=HEADER_BYTES)
    if data.size != rows * dim:
        sys.exit(f"{path} is truncated")
    return data.reshape(int(rows), int(dim))


def write(path, rows):
    """Writes a 2-d array as float32 in the format above."""
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(np.array(rows.shape, dtype="<u8").tobytes())
        np.ascontiguousarray(rows, dtype="<f4").tofile(f)
