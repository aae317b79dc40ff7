//! Build time, queries/s, recall@10 and peak memory of lookalike's [`VectorIndex`] with one
//! engine on one prepared dataset, as JSON lines; `bench/index.sh` runs it for each engine
//! beside faiss and hnswlib (`bench/index/peers.py`) on the same files and prints the
//! combined table.
//!
//! Usage: `cargo run --release -p lookalike-bench --bin index_bench -- [--engine native|hnsw_rs]
//! DATA_DIR BUILD_THREADS EF...` (`native` unless given). Rows are labelled `lookalike` for the
//! native engine and `hnsw_rs` for the hnsw_rs one, both behind `VectorIndex`.
//!
//! `DATA_DIR` is written by `bench/index/data.py`: `base.f32` and `queries.f32` in the benches'
//! feature matrix format (`lookalike_bench::experiment::features`, `bench/feature_matrix.py`:
//! `LKFEAT01`, rows, dim as u64 little-endian, then the rows as little-endian f32, already
//! L2-normalised), and `truth.knn` (`LKKNN001`, rows, k as u64, then each query's
//! exact nearest base rows as u32, nearest first). A base row's id is its row number.
//!
//! What is timed, and why it is like for like with the peers:
//! - the build is one `insert_batch` of every row, inside a rayon pool of `BUILD_THREADS`
//!   threads (`VectorIndex` links a large batch on every thread of the current rayon pool, so
//!   the pool sets its parallelism); the peers build with the same thread count;
//! - the queries run one after another on this thread (the peers get one thread and the whole
//!   query matrix in one call, so neither pays per-query interpreter overhead);
//! - every query goes through [`VectorIndex::search`] with an accept-all filter, the path the
//!   server takes.
//!
//! `VectorIndex` fixes `ef_search` when it is built and offers no setter, but it searches
//! with `max(ef_search, k)`: the index is built with `ef_search = K`, and a search at `ef`
//! asks for `k = ef` and keeps the first [`K`]. The graph explores exactly as it would for
//! `k = K` at that `ef`; the extra work is turning `ef` candidates instead of `K` into
//! results and sorting them, a few percent of a query at most, counted against lookalike.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use lookalike::index::{IndexEngine, IndexParams, VectorIndex};
use serde_json::json;

/// Neighbours scored per query: recall@10.
const K: usize = 10;
const VECTORS_MAGIC: &[u8; 8] = b"LKFEAT01";
const TRUTH_MAGIC: &[u8; 8] = b"LKKNN001";
/// Untimed queries before each timed pass: the first ones fault in pages and fill caches.
const WARM_UP_QUERIES: usize = 100;

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut engine = IndexEngine::Native;
    if args.first().is_some_and(|a| a == "--engine") {
        let name = args.get(1).context("--engine needs a name")?;
        engine = IndexEngine::ALL
            .into_iter()
            .find(|e| e.name() == name)
            .with_context(|| format!("unknown engine {name:?}: native or hnsw_rs"))?;
        args.drain(..2);
    }
    let [data_dir, threads, efs @ ..] = args.as_slice() else {
        bail!("usage: index_bench [--engine native|hnsw_rs] DATA_DIR BUILD_THREADS EF...");
    };
    let data_dir = Path::new(data_dir);
    let build_threads: usize = threads.parse().context("BUILD_THREADS must be a count")?;
    let efs: Vec<usize> = efs.iter().map(|ef| ef.parse()).collect::<Result<_, _>>().context("EF must be a count")?;
    ensure!(!efs.is_empty() && efs.iter().all(|&ef| ef >= K), "give at least one ef, each at least {K}");

    let (dim, base) = read_vectors(&data_dir.join("base.f32"))?;
    let (query_dim, queries) = read_vectors(&data_dir.join("queries.f32"))?;
    let (truth_k, truth) = read_truth(&data_dir.join("truth.knn"))?;
    ensure!(query_dim == dim, "queries have dimension {query_dim}, the base {dim}");
    ensure!(truth.len() == queries.len() && truth_k >= K, "truth.knn does not match queries.f32");
    let items: Vec<(u64, Vec<f32>)> = base.into_iter().enumerate().map(|(row, v)| (row as u64, v)).collect();
    let stored = items.len();
    let params = IndexParams { engine, ef_search: K, ..IndexParams::default() };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(build_threads).build()?;
    let run = Run { data_dir, dim, stored, build_threads, params: &params, queries: &queries, truth: &truth };

    ensure!(stored >= params.exact_below, "{stored} vectors: below exact_below every search would be a scan");
    let rss_before_kb = proc_status_kb("VmRSS")?;
    let started = Instant::now();
    let index = VectorIndex::new(dim, stored, params.clone());
    pool.install(|| index.insert_batch(&items));
    let build = Build { seconds: started.elapsed().as_secs_f64(), rss_before_kb };
    let accept_all = |_: u64| true;
    let label = match engine {
        IndexEngine::Native => "lookalike",
        IndexEngine::HnswRs => "hnsw_rs",
    };
    run.report(label, &build, &efs, |query, ef| {
        index.search(query, ef, &accept_all, stored).iter().take(K).map(|n| n.id).collect()
    })
}

/// How long the build took, and the resident memory before it.
struct Build {
    seconds: f64,
    rss_before_kb: u64,
}

/// One dataset, loaded, and what every output line repeats.
struct Run<'a> {
    data_dir: &'a Path,
    dim: usize,
    stored: usize,
    build_threads: usize,
    params: &'a IndexParams,
    queries: &'a [Vec<f32>],
    truth: &'a [Vec<u32>],
}

impl Run<'_> {
    /// Times every query at each `ef` on this thread and prints one JSON line per `ef`.
    fn report(
        &self,
        engine: &str,
        build: &Build,
        efs: &[usize],
        search: impl Fn(&[f32], usize) -> Vec<u64>,
    ) -> anyhow::Result<()> {
        let index_mb = proc_status_kb("VmRSS")?.saturating_sub(build.rss_before_kb) as f64 / 1024.0;
        for &ef in efs {
            for query in self.queries.iter().take(WARM_UP_QUERIES) {
                search(query, ef);
            }
            let started = Instant::now();
            let answers: Vec<Vec<u64>> = self.queries.iter().map(|query| search(query, ef)).collect();
            let seconds = started.elapsed().as_secs_f64();
            let line = json!({
                "dataset": self.data_dir.file_name().map(|n| n.to_string_lossy()),
                "engine": engine,
                "n": self.stored,
                "dim": self.dim,
                "queries": self.queries.len(),
                "build_threads": self.build_threads,
                "query_threads": 1,
                "m": self.params.max_nb_connection,
                "ef_construction": self.params.ef_construction,
                "ef": ef,
                "recall10": recall_at_k(&answers, self.truth),
                "qps": self.queries.len() as f64 / seconds,
                "build_s": build.seconds,
                "index_mb": index_mb,
                "peak_rss_mb": proc_status_kb("VmHWM")? as f64 / 1024.0,
            });
            println!("{line}");
        }
        Ok(())
    }
}

/// Mean over queries of the share of the exact `K` nearest found among the answer's `K`.
fn recall_at_k(answers: &[Vec<u64>], truth: &[Vec<u32>]) -> f64 {
    let found: usize = answers
        .iter()
        .zip(truth)
        .map(|(answer, exact)| {
            exact[..K].iter().filter(|&&id| answer.iter().take(K).any(|&a| a == u64::from(id))).count()
        })
        .sum();
    found as f64 / (answers.len() * K) as f64
}

/// A field of `/proc/self/status` in kB (`VmRSS` now, `VmHWM` the peak so far).
fn proc_status_kb(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status.lines().find_map(|l| l.strip_prefix(field)).with_context(|| format!("no {field}"))?;
    let kb = line.trim_start_matches(':').trim().trim_end_matches("kB").trim();
    kb.parse().with_context(|| format!("{field} is not a number: {kb}"))
}

/// Reads the 24-byte header of either format: magic, rows, columns.
fn read_header(reader: &mut impl Read, magic: &[u8; 8], path: &Path) -> anyhow::Result<(usize, usize)> {
    let mut header = [0u8; 24];
    reader.read_exact(&mut header).with_context(|| format!("{} has no header", path.display()))?;
    ensure!(&header[..8] == magic, "{} does not start with {}", path.display(), String::from_utf8_lossy(magic));
    let word = |at: usize| -> anyhow::Result<usize> {
        let mut le = [0u8; 8];
        le.copy_from_slice(&header[at..at + 8]);
        usize::try_from(u64::from_le_bytes(le)).context("header field out of range")
    };
    Ok((word(8)?, word(16)?))
}

/// The rows of a vectors file, read row by row so that peak memory (which this bench reports)
/// holds them once; `features::read_cache` would hold the file's bytes beside them.
fn read_vectors(path: &Path) -> anyhow::Result<(usize, Vec<Vec<f32>>)> {
    let mut reader = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let (rows, dim) = read_header(&mut reader, VECTORS_MAGIC, path)?;
    ensure!(dim > 0, "{} has dimension 0", path.display());
    let mut bytes = vec![0u8; dim * 4];
    let mut vectors = Vec::with_capacity(rows);
    for row in 0..rows {
        reader.read_exact(&mut bytes).with_context(|| format!("{} ends at row {row}", path.display()))?;
        vectors.push(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
    }
    Ok((dim, vectors))
}

/// Each query's exact nearest base rows, nearest first.
fn read_truth(path: &Path) -> anyhow::Result<(usize, Vec<Vec<u32>>)> {
    let mut reader = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let (rows, k) = read_header(&mut reader, TRUTH_MAGIC, path)?;
    let mut bytes = vec![0u8; k * 4];
    let mut truth = Vec::with_capacity(rows);
    for row in 0..rows {
        reader.read_exact(&mut bytes).with_context(|| format!("{} ends at row {row}", path.display()))?;
        truth.push(bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
    }
    Ok((k, truth))
}
