"""Writes one index-benchmark dataset: base vectors, queries and their exact neighbours.

Every engine in bench/index.sh reads the same three files from the output directory, so
they index the same vectors, answer the same queries and are scored against the same truth:

  base.f32, queries.f32  L2-normalised rows in the benches' feature matrix format
                         (bench/feature_matrix.py): b"LKFEAT01", rows and dim as u64
                         little-endian, then the rows as little-endian f32
  truth.knn              b"LKKNN001", rows and k as u64 little-endian, then each query's k
                         nearest base rows (largest inner product first) as u32

Two sources:
  fashion    the Lite0 backbone features the experiment cached for the 60,000 train
             images (the catalogue) and the first QUERIES of the 10,000 test images
  synthetic  N unit vectors around CLUSTERS random unit centres (Gaussian noise, seeded),
             queries drawn from the same mixture, so the graph has to cope with dense
             neighbourhoods as real embeddings do, unlike uniform random vectors
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import feature_matrix  # noqa: E402  (bench/feature_matrix.py)

TRUTH_MAGIC = b"LKKNN001"
# Neighbours kept per query: recall@10 needs 10.
TRUTH_K = 10
# Queries scored against the whole base at once; bounds the score matrix at
# QUERY_BLOCK × rows floats (512 MB for a million rows).
QUERY_BLOCK = 128
# Rows generated at once, to bound the temporaries of the synthetic mixture.
GENERATE_BLOCK = 100_000


def normalised(rows):
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def write_table(path, magic, table, dtype):
    with open(path, "wb") as f:
        f.write(magic)
        f.write(np.array(table.shape, dtype="<u8").tobytes())
        np.ascontiguousarray(table, dtype=dtype).tofile(f)


def exact_neighbours(base, queries):
    """The TRUTH_K base rows with the largest inner product with each query, best first."""
    truth = np.empty((len(queries), TRUTH_K), dtype=np.uint32)
    for start in range(0, len(queries), QUERY_BLOCK):
        scores = queries[start : start + QUERY_BLOCK] @ base.T
        top = np.argpartition(-scores, TRUTH_K, axis=1)[:, :TRUTH_K]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        truth[start : start + QUERY_BLOCK] = np.take_along_axis(top, order, axis=1)
    return truth


def mixture(rng, centres, count, spread):
    rows = []
    for start in range(0, count, GENERATE_BLOCK):
        size = min(GENERATE_BLOCK, count - start)
        labels = rng.integers(len(centres), size=size)
        noise = rng.standard_normal((size, centres.shape[1]), dtype=np.float32)
        rows.append(normalised(centres[labels] + spread * noise))
    return np.concatenate(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    sources = parser.add_subparsers(dest="source", required=True)
    fashion = sources.add_parser("fashion")
    fashion.add_argument("--train", type=Path, required=True)
    fashion.add_argument("--test", type=Path, required=True)
    fashion.add_argument("--queries", type=int, default=2_000)
    synthetic = sources.add_parser("synthetic")
    synthetic.add_argument("--n", type=int, required=True)
    synthetic.add_argument("--dim", type=int, default=128)
    synthetic.add_argument("--clusters", type=int, default=1_000)
    synthetic.add_argument("--queries", type=int, default=10_000)
    # Per-coordinate noise: 0.06 × √128 ≈ 0.68, so a point sits about 34° from its centre
    # and neighbouring clusters overlap a little.
    synthetic.add_argument("--spread", type=float, default=0.06)
    synthetic.add_argument("--seed", type=int, default=4)
    args = parser.parse_args()

    if args.source == "fashion":
        base = normalised(feature_matrix.read(args.train))
        queries = normalised(feature_matrix.read(args.test)[: args.queries])
    else:
        rng = np.random.default_rng(args.seed)
        centres = normalised(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
        base = mixture(rng, centres, args.n, args.spread)
        queries = mixture(rng, centres, args.queries, args.spread)

    args.out.mkdir(parents=True, exist_ok=True)
    feature_matrix.write(args.out / "base.f32", base)
    feature_matrix.write(args.out / "queries.f32", queries)
    write_table(args.out / "truth.knn", TRUTH_MAGIC, exact_neighbours(base, queries), "<u4")
    print(f"{args.out}: {base.shape[0]} × {base.shape[1]} base, {len(queries)} queries", file=sys.stderr)


if __name__ == "__main__":
    main()
