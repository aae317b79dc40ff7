#!/usr/bin/env python3
"""Writes the small real-image catalogue that scripts/container-test.sh ingests into the Docker
image: Fashion-MNIST photographs (28x28 gray PNGs) of four labels that look unlike each other,
8 catalogue images per label from the training split and 1 query per label from the test split.

    python3 scripts/container-fixtures.py [--source DIR] [--out tests/fixtures/container]

Fashion-MNIST comes from Debian's dataset-fashion-mnist package (scripts/test-assets.sh installs
it). The choice is fixed (the first images of each label, in file order), so running this again
writes the same files. The output is committed; this script only says where it came from.
"""

import argparse
import gzip
import os
import shutil
import struct
import zlib

LABELS = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
CHOSEN = ["trouser", "sneaker", "bag", "t-shirt_top"]
CATALOGUE_PER_LABEL = 8
QUERIES_PER_LABEL = 1
SIDE = 28


def read_split(source, prefix):
    """(label index, 784 gray bytes) pairs of one split, in file order."""
    with gzip.open(os.path.join(source, f"{prefix}-images-idx3-ubyte.gz")) as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 0x803 and rows == cols == SIDE, "not an idx3 image file of 28x28 images"
        pixels = f.read(count * SIDE * SIDE)
    with gzip.open(os.path.join(source, f"{prefix}-labels-idx1-ubyte.gz")) as f:
        magic, labelled = struct.unpack(">II", f.read(8))
        assert magic == 0x801 and labelled == count, "labels do not match the images"
        labels = f.read(count)
    return [(labels[i], pixels[i * SIDE * SIDE:(i + 1) * SIDE * SIDE]) for i in range(count)]


def png(gray):
    """An 8-bit grayscale PNG of a 28x28 image."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + gray[y * SIDE:(y + 1) * SIDE] for y in range(SIDE))
    header = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def first_of_each(samples, per_label):
    """The indexes of the first `per_label` samples of every chosen label."""
    wanted = {LABELS.index(name): [] for name in CHOSEN}
    for index, (label, _) in enumerate(samples):
        if label in wanted and len(wanted[label]) < per_label:
            wanted[label].append(index)
    return wanted


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", default="tests/fixtures/container")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    for split, folder, per_label in [("train", "catalogue", CATALOGUE_PER_LABEL), ("t10k", "queries", QUERIES_PER_LABEL)]:
        samples = read_split(args.source, split)
        for label, indexes in first_of_each(samples, per_label).items():
            directory = os.path.join(args.out, folder, LABELS[label])
            os.makedirs(directory, exist_ok=True)
            for index in indexes:
                with open(os.path.join(directory, f"{split}-{index:05d}.png"), "wb") as f:
                    f.write(png(samples[index][1]))
    print(f"wrote {args.out}: {len(CHOSEN)} labels, {CATALOGUE_PER_LABEL} catalogue and {QUERIES_PER_LABEL} query images each")


if __name__ == "__main__":
    main()
