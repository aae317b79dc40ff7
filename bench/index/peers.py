"""The peers of lookalike's index on one prepared dataset, as JSON lines.

Usage: peers.py faiss|hnswlib DATA_DIR BUILD_THREADS EF...

Mirrors bench/src/bin/index_bench.rs field for field so that bench/index.sh can put the engines
in one table: same files (bench/index/data.py), same HNSW shape (M = 16, so 32 links on
the bottom layer, ef_construction = 200, as config/default.toml gives lookalike), same
similarity (inner product on unit vectors: lookalike's 1 − cosine ranks identically), the
build on BUILD_THREADS threads, every query on one thread. The whole query matrix goes to
the engine in one call, so Python's per-call overhead is paid once, not per query. Run one
engine per process: the peak resident memory reported (VmHWM) is then that engine's own.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import feature_matrix  # noqa: E402  (bench/feature_matrix.py)
from data import TRUTH_MAGIC  # noqa: E402

K = 10
M = 16
EF_CONSTRUCTION = 200
WARM_UP_QUERIES = 100


def status_kb(field):
    """A field of /proc/self/status in kB (VmRSS now, VmHWM the peak so far)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def read_truth(path):
    with open(path, "rb") as f:
        header = f.read(24)
    if header[:8] != TRUTH_MAGIC:
        sys.exit(f"{path} is not a truth file")
    rows, k = (int(x) for x in np.frombuffer(header[8:], dtype="<u8"))
    return np.fromfile(path, dtype="<u4", offset=24).reshape(rows, k)


class Faiss:
    """faiss-cpu IndexHNSWFlat; OpenMP threads set per phase."""

    def __init__(self, dim, build_threads):
        import faiss

        self.faiss = faiss
        self.build_threads = build_threads
        self.index = faiss.IndexHNSWFlat(dim, M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = EF_CONSTRUCTION

    def build(self, base):
        self.faiss.omp_set_num_threads(self.build_threads)
        self.index.add(base)
        self.faiss.omp_set_num_threads(1)

    def search(self, queries, ef):
        self.index.hnsw.efSearch = ef
        return self.index.search(queries, K)[1]


class Hnswlib:
    """hnswlib with the 'ip' space (1 − inner product)."""

    def __init__(self, dim, build_threads):
        import hnswlib

        self.build_threads = build_threads
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.dim = dim

    def build(self, base):
        self.index.init_index(max_elements=len(base), ef_construction=EF_CONSTRUCTION, M=M, random_seed=100)
        self.index.add_items(base, np.arange(len(base)), num_threads=self.build_threads)

    def search(self, queries, ef):
        self.index.set_ef(ef)
        return self.index.knn_query(queries, k=K, num_threads=1)[0]


ENGINES = {"faiss": Faiss, "hnswlib": Hnswlib}


def main():
    if len(sys.argv) < 5 or sys.argv[1] not in ENGINES:
        sys.exit(__doc__)
    engine_name, data_dir, build_threads = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    efs = [int(ef) for ef in sys.argv[4:]]
    base = np.ascontiguousarray(feature_matrix.read(data_dir / "base.f32"))
    queries = np.ascontiguousarray(feature_matrix.read(data_dir / "queries.f32"))
    truth = read_truth(data_dir / "truth.knn")[:, :K]

    engine = ENGINES[engine_name](base.shape[1], build_threads)
    rss_before = status_kb("VmRSS")
    started = time.perf_counter()
    engine.build(base)
    build_s = time.perf_counter() - started
    index_mb = (status_kb("VmRSS") - rss_before) / 1024

    for ef in efs:
        engine.search(queries[:WARM_UP_QUERIES], ef)
        started = time.perf_counter()
        answers = engine.search(queries, ef)
        seconds = time.perf_counter() - started
        found = sum(len(np.intersect1d(a, t)) for a, t in zip(answers, truth))
        line = {
            "dataset": data_dir.name,
            "engine": engine_name,
            "n": len(base),
            "dim": base.shape[1],
            "queries": len(queries),
            "build_threads": build_threads,
            "query_threads": 1,
            "m": M,
            "ef_construction": EF_CONSTRUCTION,
            "ef": ef,
            "recall10": found / (len(queries) * K),
            "qps": len(queries) / seconds,
            "build_s": build_s,
            "index_mb": index_mb,
            "peak_rss_mb": status_kb("VmHWM") / 1024,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
