//! Integration tests of `lookalike::index` against brute force.
//!
//! Owns the index's behavioural guarantees: recall, filters, deletions, exact answers for
//! rare labels, save/load round trips and failure on damaged directories. Tests share one
//! read-only clustered index built once (`fixture()`), searched from many test threads.
//! The load-vs-rebuild timing is `#[ignore]`d: run it with
//! `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo test --test index -- --ignored --nocapture`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use lookalike::index::{IndexParams, Neighbour, VectorIndex, unit_cosine_distance};
use sha2::{Digest, Sha256};

const DIM: usize = 32;
const POINTS: usize = 5_000;
const CLUSTERS: usize = 50;
const K: usize = 10;

/// splitmix64: a tiny deterministic generator, so tests need no extra crate.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn random_unit(rng: &mut Rng, dim: usize) -> Vec<f32> {
    normalised((0..dim).map(|_| rng.symmetric()).collect())
}

/// Points scattered around `CLUSTERS` random centres, like embeddings of a catalogue.
fn clustered(rng: &mut Rng, n: usize) -> Vec<Vec<f32>> {
    let centres: Vec<Vec<f32>> = (0..CLUSTERS).map(|_| random_unit(rng, DIM)).collect();
    (0..n)
        .map(|_| {
            let centre = &centres[rng.below(CLUSTERS)];
            normalised(centre.iter().map(|c| c + 0.25 * rng.symmetric()).collect())
        })
        .collect()
}

struct Fixture {
    vectors: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    index: VectorIndex,
}

/// Ids are `1000 + position`, so they are not the graph's internal positions.
fn id_of(position: usize) -> u64 {
    1_000 + position as u64
}

fn graph_params() -> IndexParams {
    IndexParams { max_nb_connection: 16, ef_construction: 100, ef_search: 64, exact_below: 0 }
}

fn build(vectors: &[Vec<f32>], params: IndexParams) -> VectorIndex {
    let index = VectorIndex::new(DIM, vectors.len(), params);
    let items: Vec<(u64, Vec<f32>)> = vectors.iter().enumerate().map(|(i, v)| (id_of(i), v.clone())).collect();
    index.insert_batch(&items);
    index
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = Rng(42);
        let mut points = clustered(&mut rng, POINTS + 100);
        let queries = points.split_off(POINTS);
        let index = build(&points, graph_params());
        Fixture { vectors: points, queries, index }
    })
}

/// Brute-force answer over the fixture's vectors.
fn exact(f: &Fixture, query: &[f32], k: usize, keep: &dyn Fn(u64) -> bool) -> Vec<Neighbour> {
    let mut all: Vec<Neighbour> = f
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| Neighbour { id: id_of(i), distance: unit_cosine_distance(query, v) })
        .filter(|n| keep(n.id))
        .collect();
    all.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
    all.truncate(k);
    all
}

fn assert_sorted(hits: &[Neighbour]) {
    assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
}

#[test]
fn recall_at_10_is_at_least_095_against_exact_search() {
    let f = fixture();
    let mut found = 0;
    for query in &f.queries {
        let hits = f.index.search(query, K, &|_| true, POINTS);
        assert_eq!(hits.len(), K);
        assert_sorted(&hits);
        let truth: HashSet<u64> = exact(f, query, K, &|_| true).iter().map(|n| n.id).collect();
        found += hits.iter().filter(|n| truth.contains(&n.id)).count();
    }
    let recall = found as f64 / (K * f.queries.len()) as f64;
    assert!(recall >= 0.95, "recall@10 = {recall}");
}

#[test]
fn rare_label_returns_exactly_its_items_sorted() {
    let f = fixture();
    let rare: HashSet<u64> = [3, 777, 1_234, 2_500, 4_999].map(id_of).into();
    let in_rare = |id: u64| rare.contains(&id);
    for query in f.queries.iter().take(20) {
        let hits = f.index.search(query, K, &in_rare, rare.len());
        assert_eq!(hits, exact(f, query, K, &in_rare));
        assert_eq!(hits.len(), rare.len());
        assert_sorted(&hits);
    }
}

#[test]
fn k_larger_than_matching_returns_all_matching() {
    let f = fixture();
    let few = |id: u64| id.is_multiple_of(2) && id < id_of(40);
    let hits = f.index.search(&f.queries[0], 50, &few, 20);
    assert_eq!(hits.len(), 20);
    assert!(hits.iter().all(|n| few(n.id)));
    assert_sorted(&hits);
}

#[test]
fn graph_search_with_a_broad_filter_returns_k_matching() {
    // 1,000 of 5,000 pass: above the exact-scan threshold, so the graph answers.
    let f = fixture();
    let fifth = |id: u64| id.is_multiple_of(5);
    let mut found = 0;
    for query in &f.queries {
        let hits = f.index.search(query, K, &fifth, POINTS / 5);
        assert_eq!(hits.len(), K);
        assert!(hits.iter().all(|n| fifth(n.id)));
        let truth: HashSet<u64> = exact(f, query, K, &fifth).iter().map(|n| n.id).collect();
        found += hits.iter().filter(|n| truth.contains(&n.id)).count();
    }
    let recall = found as f64 / (K * f.queries.len()) as f64;
    assert!(recall >= 0.9, "filtered recall@10 = {recall}");
}

#[test]
fn deleted_ids_never_come_back() {
    let f = fixture();
    let mut rng = Rng(7);
    let mut deleted: HashSet<u64> = (0..POINTS / 3).map(|_| id_of(rng.below(POINTS))).collect();
    // Delete each query's true nearest neighbours too, where a graph search would land.
    for query in &f.queries {
        deleted.extend(exact(f, query, 3, &|_| true).iter().map(|n| n.id));
    }
    let alive = |id: u64| !deleted.contains(&id);
    let matching = POINTS - deleted.len();
    for query in &f.queries {
        let hits = f.index.search(query, K, &alive, matching);
        assert_eq!(hits.len(), K);
        assert!(hits.iter().all(|n| alive(n.id)));
    }
}

/// A caller that claims every stored id matches when some do not (a count gone stale) still
/// gets only matching ids, and k of them: the unfiltered fast path checks its answer.
#[test]
fn an_overstated_matching_count_still_honours_the_filter() {
    let f = fixture();
    for query in &f.queries {
        let nearest: HashSet<u64> = exact(f, query, 5, &|_| true).iter().map(|n| n.id).collect();
        let keep = |id: u64| !nearest.contains(&id);
        let hits = f.index.search(query, K, &keep, POINTS);
        assert_eq!(hits.len(), K);
        assert!(hits.iter().all(|n| keep(n.id)), "a filtered-out id came back");
        assert_sorted(&hits);
    }
}

#[test]
fn small_index_answers_exactly() {
    let f = fixture();
    let small = build(&f.vectors[..300], IndexParams::default());
    let in_small = |id: u64| id < id_of(300);
    for query in f.queries.iter().take(10) {
        assert_eq!(small.search(query, K, &|_| true, 300), exact(f, query, K, &in_small));
    }
}

#[test]
fn concurrent_inserts_and_searches() {
    let f = fixture();
    let index = VectorIndex::new(DIM, 2_000, graph_params());
    std::thread::scope(|scope| {
        for part in 0..2 {
            let index = &index;
            scope.spawn(move || {
                let start = part * 1_000;
                for (c, chunk) in f.vectors[start..start + 1_000].chunks(250).enumerate() {
                    let base = start + c * 250;
                    let items: Vec<(u64, Vec<f32>)> =
                        chunk.iter().enumerate().map(|(i, v)| (id_of(base + i), v.clone())).collect();
                    index.insert_batch(&items);
                }
            });
        }
        scope.spawn(|| {
            for query in &f.queries {
                let stored = index.len();
                let hits = index.search(query, K, &|_| true, stored);
                assert!(hits.len() <= K);
            }
        });
    });
    assert_eq!(index.len(), 2_000);
}

#[test]
fn save_then_load_gives_identical_results() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("generation-1").join("index");
    f.index.save(&path).expect("save");
    // Saving again replaces the directory in place.
    f.index.save(&path).expect("save over an existing index");
    let loaded = VectorIndex::load(&path).expect("load");
    assert_eq!(loaded.len(), f.index.len());
    assert_eq!(loaded.dim(), DIM);
    assert_eq!(loaded.params(), f.index.params());
    let odd = |id: u64| id % 2 == 1;
    for query in &f.queries {
        assert_eq!(loaded.search(query, K, &|_| true, POINTS), f.index.search(query, K, &|_| true, POINTS));
        assert_eq!(loaded.search(query, K, &odd, POINTS / 2), f.index.search(query, K, &odd, POINTS / 2));
    }
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("index")]);
}

#[test]
fn empty_index_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty");
    VectorIndex::new(DIM, 0, IndexParams::default()).save(&path).expect("save");
    let loaded = VectorIndex::load(&path).expect("load");
    assert!(loaded.is_empty());
    assert_eq!(loaded.dim(), DIM);
}

fn saved_small_index(dir: &Path) -> std::path::PathBuf {
    let f = fixture();
    let path = dir.join("index");
    build(&f.vectors[..200], graph_params()).save(&path).expect("save");
    path
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).expect("read");
    change(&mut bytes);
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn loading_a_missing_or_damaged_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(VectorIndex::load(&dir.path().join("absent")).is_err());

    type Damage = fn(&Path);
    let damages: [(&str, Damage); 5] = [
        ("garbage index.json", |p| {
            std::fs::write(p.join("index.json"), b"{not json").expect("write");
        }),
        ("flipped graph byte", |p| {
            rewrite(&p.join("graph.bin"), |b| b[40] ^= 0xFF);
        }),
        ("truncated graph", |p| {
            rewrite(&p.join("graph.bin"), |b| b.truncate(b.len() / 2));
        }),
        ("missing graph", |p| {
            std::fs::remove_file(p.join("graph.bin")).expect("remove");
        }),
        ("bad magic with a matching checksum", |p| {
            // Gets past the checksum: exercises the graph file's own validation.
            let graph = p.join("graph.bin");
            rewrite(&graph, |b| b[..4].copy_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]));
            let sha = hex::encode(Sha256::digest(std::fs::read(&graph).expect("read")));
            let meta = p.join("index.json");
            let text = std::fs::read_to_string(&meta).expect("read");
            let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
            json["graph"]["sha256"] = sha.into();
            std::fs::write(&meta, json.to_string()).expect("write");
        }),
    ];
    for (what, damage) in damages {
        let case = tempfile::tempdir().expect("tempdir");
        let path = saved_small_index(case.path());
        assert!(VectorIndex::load(&path).is_ok(), "{what}: intact copy loads");
        damage(&path);
        assert!(VectorIndex::load(&path).is_err(), "{what}: must not load");
    }
}

#[test]
#[ignore = "timing: 60,000 x 1280-d, minutes; run with --ignored --nocapture at opt-level 3"]
fn load_is_faster_than_rebuild_60k_1280d() {
    const N: usize = 60_000;
    const D: usize = 1280;
    let mut rng = Rng(2026);
    let items: Vec<(u64, Vec<f32>)> = (0..N as u64).map(|id| (id, random_unit(&mut rng, D))).collect();
    let start = Instant::now();
    let index = VectorIndex::new(D, N, IndexParams::default());
    index.insert_batch(&items);
    let rebuild = start.elapsed();

    let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let path = dir.path().join("index");
    let start = Instant::now();
    index.save(&path).expect("save");
    let save = start.elapsed();
    let start = Instant::now();
    let loaded = VectorIndex::load(&path).expect("load");
    let load = start.elapsed();
    assert_eq!(loaded.len(), N);
    let query = &items[123].1;
    assert_eq!(loaded.search(query, K, &|_| true, N), index.search(query, K, &|_| true, N));
    let bytes: u64 = std::fs::read_dir(&path)
        .expect("list")
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{N} x {D}: rebuild (parallel insert) {rebuild:.2?}, save {save:.2?}, \
         load (checksum + graph) {load:.2?}, {:.0} MB on disk, {} threads",
        bytes as f64 / 1e6,
        rayon::current_num_threads()
    );
}
