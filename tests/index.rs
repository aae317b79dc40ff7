//! The contract of `lookalike::index::VectorIndex`, checked against brute force for every
//! engine (`native`, `hnsw_rs`): recall, filters (labels, deletions, overstated counts),
//! exact answers for rare labels and small indexes, ties, inserts racing searches,
//! parallel batches, save and load (round trip, restart after drop, another engine,
//! damaged directories).
//!
//! Every check is a function of the engine; `contract_tests!` runs each one as
//! `native::<name>` and `hnsw_rs::<name>` (`cargo test --test index native::`). Vectors come
//! from one generator (`clustered`). Most checks share one read-only clustered index per
//! engine, built once (`fixture()`) and searched from many test threads. The load-vs-rebuild
//! timing is `#[ignore]`d: run it with
//! `CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo test --test index -- --ignored --nocapture`
//! (`TIMING_N`, `TIMING_DIM` choose its size: 60,000 × 1280 unless set).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use lookalike::index::{EXACT_MATCHING_PER_EF, IndexEngine, IndexParams, Neighbour, VectorIndex, unit_cosine_distance};
use sha2::{Digest, Sha256};

const DIM: usize = 32;
const POINTS: usize = 5_000;
const CLUSTERS: usize = 50;
const K: usize = 10;

macro_rules! contract_tests {
    ($($check:ident),* $(,)?) => {
        mod native {
            $(#[test] fn $check() { super::$check(super::IndexEngine::Native) })*
        }
        mod hnsw_rs {
            $(#[test] fn $check() { super::$check(super::IndexEngine::HnswRs) })*
        }
    };
}

contract_tests!(
    index_is_send_and_sync,
    empty_index_and_zero_k_return_nothing,
    recall_at_10_is_at_least_095_against_exact_search,
    recall_at_10_is_at_least_095_at_default_params,
    rare_label_returns_exactly_its_items_sorted,
    k_larger_than_matching_returns_all_matching,
    graph_search_with_a_broad_filter_returns_k_matching,
    deleted_ids_never_come_back,
    an_overstated_matching_count_still_honours_the_filter,
    small_index_answers_exactly,
    ties_are_broken_by_id,
    concurrent_inserts_and_searches,
    inserts_racing_searches_lose_nothing,
    a_big_batch_is_linked_in_parallel_and_found,
    save_then_load_gives_identical_results,
    a_loaded_index_keeps_growing_and_saves_over_itself,
    restart_loads_what_was_saved_before_drop,
    empty_index_round_trips,
    ids_list_every_stored_point_also_after_a_load,
    configured_search_params_win_over_saved_ones,
    loading_under_another_engine_is_an_error,
    loading_a_missing_or_damaged_directory_is_an_error,
);

// ---- vectors ----

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

/// `n` unit vectors scattered around `CLUSTERS` centres drawn from `seed`, like embeddings
/// of a catalogue: the same seed gives the same centres, so sets drawn from one seed (a
/// catalogue and its queries) share them.
fn clustered(seed: u64, n: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS).map(|_| random_unit(&mut rng, DIM)).collect();
    (0..n)
        .map(|_| {
            let centre = &centres[rng.below(CLUSTERS)];
            normalised(centre.iter().map(|c| c + 0.25 * rng.symmetric()).collect())
        })
        .collect()
}

/// Ids are `1000 + position`, so they are not the graph's internal positions.
fn id_of(position: usize) -> u64 {
    1_000 + position as u64
}

/// `vectors` as items, the first at position `first`.
fn items(vectors: &[Vec<f32>], first: usize) -> Vec<(u64, Vec<f32>)> {
    vectors.iter().enumerate().map(|(i, v)| (id_of(first + i), v.clone())).collect()
}

// ---- indexes ----

/// The graph always answers (no exact scan below a size), at a build cheaper than default.
fn graph_params(engine: IndexEngine) -> IndexParams {
    IndexParams { engine, max_nb_connection: 16, ef_construction: 100, ef_search: 64, exact_below: 0 }
}

fn default_params(engine: IndexEngine) -> IndexParams {
    IndexParams { engine, ..IndexParams::default() }
}

fn build(vectors: &[Vec<f32>], params: IndexParams) -> VectorIndex {
    let index = VectorIndex::new(DIM, vectors.len(), params);
    index.insert_batch(&items(vectors, 0));
    index
}

struct Fixture {
    vectors: Vec<Vec<f32>>,
    queries: Vec<Vec<f32>>,
    index: VectorIndex,
}

fn fixture(engine: IndexEngine) -> &'static Fixture {
    static FIXTURES: [OnceLock<Fixture>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = IndexEngine::ALL.iter().position(|&e| e == engine).expect("a known engine");
    FIXTURES[slot].get_or_init(|| {
        let mut points = clustered(42, POINTS + 100);
        let queries = points.split_off(POINTS);
        let index = build(&points, graph_params(engine));
        Fixture { vectors: points, queries, index }
    })
}

/// The exact `k` nearest among `vectors` (ids by position) that `keep` accepts.
fn brute_force(vectors: &[Vec<f32>], query: &[f32], k: usize, keep: &dyn Fn(u64) -> bool) -> Vec<Neighbour> {
    let mut all: Vec<Neighbour> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| Neighbour { id: id_of(i), distance: unit_cosine_distance(query, v) })
        .filter(|n| keep(n.id))
        .collect();
    all.sort_by(|a, b| a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id)));
    all.truncate(k);
    all
}

fn found_of(hits: &[Neighbour], exact: &[Neighbour]) -> usize {
    let truth: HashSet<u64> = exact.iter().map(|n| n.id).collect();
    hits.iter().filter(|n| truth.contains(&n.id)).count()
}

/// Nearest first, ties by id, no id twice.
fn assert_sorted(hits: &[Neighbour]) {
    assert!(
        hits.windows(2).all(|w| w[0].distance < w[1].distance || (w[0].distance == w[1].distance && w[0].id < w[1].id))
    );
}

// ---- search ----

fn index_is_send_and_sync(_: IndexEngine) {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<VectorIndex>();
}

fn empty_index_and_zero_k_return_nothing(engine: IndexEngine) {
    let unit = |v: Vec<f32>| normalised(v);
    let index = VectorIndex::new(3, 10, default_params(engine));
    assert!(index.is_empty());
    assert!(index.search(&[1.0, 0.0, 0.0], 5, &|_| true, 0).is_empty());
    index.insert_batch(&[(7, unit(vec![1.0, 0.0, 0.0]))]);
    assert!(index.search(&[1.0, 0.0, 0.0], 0, &|_| true, 1).is_empty());
    let hits = index.search(&[1.0, 0.0, 0.0], 5, &|_| true, 1);
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, 7);
    assert!(hits[0].distance.abs() < 1e-6);
}

fn recall_at_10_is_at_least_095_against_exact_search(engine: IndexEngine) {
    let f = fixture(engine);
    let mut found = 0;
    for query in &f.queries {
        let hits = f.index.search(query, K, &|_| true, POINTS);
        assert_eq!(hits.len(), K);
        assert_sorted(&hits);
        found += found_of(&hits, &brute_force(&f.vectors, query, K, &|_| true));
    }
    let recall = found as f64 / (K * f.queries.len()) as f64;
    assert!(recall >= 0.95, "recall@10 = {recall}");
}

fn recall_at_10_is_at_least_095_at_default_params(engine: IndexEngine) {
    let vectors = clustered(7, 4_000);
    let index = build(&vectors, default_params(engine));
    assert!(index.len() > index.params().exact_below, "the graph, not the scan, must answer");
    let queries = clustered(7, 4_200).split_off(4_000);
    let mut found = 0;
    for query in &queries {
        let hits = index.search(query, K, &|_| true, vectors.len());
        assert_eq!(hits.len(), K);
        assert_sorted(&hits);
        found += found_of(&hits, &brute_force(&vectors, query, K, &|_| true));
    }
    let recall = found as f64 / (queries.len() * K) as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");
}

fn rare_label_returns_exactly_its_items_sorted(engine: IndexEngine) {
    let f = fixture(engine);
    let rare: HashSet<u64> = [3, 777, 1_234, 2_500, 4_999].map(id_of).into();
    let in_rare = |id: u64| rare.contains(&id);
    // A filter matching few ids, but more than k, is answered exactly too.
    let few = |id: u64| id % 100 == 7;
    let few_count = (0..POINTS).filter(|&i| few(id_of(i))).count();
    for query in f.queries.iter().take(20) {
        let hits = f.index.search(query, K, &in_rare, rare.len());
        assert_eq!(hits, brute_force(&f.vectors, query, K, &in_rare));
        assert_eq!(hits.len(), rare.len());
        assert_sorted(&hits);
        assert_eq!(f.index.search(query, K, &few, few_count), brute_force(&f.vectors, query, K, &few));
    }
}

fn k_larger_than_matching_returns_all_matching(engine: IndexEngine) {
    let f = fixture(engine);
    let few = |id: u64| id.is_multiple_of(2) && id < id_of(40);
    let hits = f.index.search(&f.queries[0], 50, &few, 20);
    assert_eq!(hits.len(), 20);
    assert!(hits.iter().all(|n| few(n.id)));
    assert_sorted(&hits);
}

fn graph_search_with_a_broad_filter_returns_k_matching(engine: IndexEngine) {
    // 1,000 of 5,000 pass: above the exact-scan threshold, so the graph answers.
    let f = fixture(engine);
    let fifth = |id: u64| id.is_multiple_of(5);
    assert!(POINTS / 5 > EXACT_MATCHING_PER_EF * f.index.params().ef_search);
    let mut found = 0;
    for query in &f.queries {
        let hits = f.index.search(query, K, &fifth, POINTS / 5);
        assert_eq!(hits.len(), K);
        assert!(hits.iter().all(|n| fifth(n.id)));
        assert_sorted(&hits);
        found += found_of(&hits, &brute_force(&f.vectors, query, K, &fifth));
    }
    let recall = found as f64 / (K * f.queries.len()) as f64;
    assert!(recall >= 0.9, "filtered recall@10 = {recall}");
}

fn deleted_ids_never_come_back(engine: IndexEngine) {
    let f = fixture(engine);
    let mut rng = Rng(7);
    let mut deleted: HashSet<u64> = (0..POINTS / 3).map(|_| id_of(rng.below(POINTS))).collect();
    // Delete each query's true nearest neighbours too, where a graph search would land.
    for query in &f.queries {
        deleted.extend(brute_force(&f.vectors, query, 3, &|_| true).iter().map(|n| n.id));
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
fn an_overstated_matching_count_still_honours_the_filter(engine: IndexEngine) {
    let f = fixture(engine);
    for query in &f.queries {
        let nearest: HashSet<u64> = brute_force(&f.vectors, query, 5, &|_| true).iter().map(|n| n.id).collect();
        let keep = |id: u64| !nearest.contains(&id);
        let hits = f.index.search(query, K, &keep, POINTS);
        assert_eq!(hits.len(), K);
        assert!(hits.iter().all(|n| keep(n.id)), "a filtered-out id came back");
        assert_sorted(&hits);
    }
}

fn small_index_answers_exactly(engine: IndexEngine) {
    let f = fixture(engine);
    let small = build(&f.vectors[..300], default_params(engine));
    for query in f.queries.iter().take(10) {
        assert_eq!(small.search(query, K, &|_| true, 300), brute_force(&f.vectors[..300], query, K, &|_| true));
    }
}

fn ties_are_broken_by_id(engine: IndexEngine) {
    let v = normalised((0..DIM).map(|i| i as f32).collect());
    let index = VectorIndex::new(DIM, 8, graph_params(engine));
    let rows: Vec<(u64, Vec<f32>)> = [9u64, 3, 7, 1, 5].iter().map(|&id| (id, v.clone())).collect();
    index.insert_batch(&rows);
    let ids: Vec<u64> = index.search(&v, 3, &|_| true, rows.len()).iter().map(|n| n.id).collect();
    assert_eq!(ids, [1, 3, 5]);
}

// ---- inserts ----

fn concurrent_inserts_and_searches(engine: IndexEngine) {
    let f = fixture(engine);
    let index = VectorIndex::new(DIM, 2_000, graph_params(engine));
    std::thread::scope(|scope| {
        for part in 0..2 {
            let index = &index;
            scope.spawn(move || {
                let start = part * 1_000;
                for (c, chunk) in f.vectors[start..start + 1_000].chunks(250).enumerate() {
                    index.insert_batch(&items(chunk, start + c * 250));
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

fn inserts_racing_searches_lose_nothing(engine: IndexEngine) {
    // A wider beam than the default: the check below is that nothing is lost, not recall.
    let params = IndexParams { ef_search: 128, ef_construction: 200, ..graph_params(engine) };
    let vectors = clustered(11, 4_000);
    let (first, more) = vectors.split_at(1_000);
    let index = build(first, params);
    let more = items(more, first.len());
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for worker in 0..3 {
            let (index, done) = (&index, &done);
            scope.spawn(move || {
                let mut round = 0;
                while !done.load(Ordering::Relaxed) {
                    let query = &first[(round * 31 + worker) % first.len()];
                    let hits = index.search(query, K, &|_| true, index.len());
                    assert!(!hits.is_empty() && hits.len() <= K);
                    round += 1;
                }
            });
        }
        // Batches of both kinds: small ones linked inline, large ones on the rayon pool.
        for (round, batch) in more.chunks(250).enumerate() {
            if round % 2 == 0 {
                batch.chunks(30).for_each(|small| index.insert_batch(small));
            } else {
                index.insert_batch(batch);
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    assert_eq!(index.len(), vectors.len());
    let lost: Vec<u64> = items(&vectors, 0)
        .iter()
        .filter(|(id, v)| !index.search(v, K, &|_| true, vectors.len()).iter().any(|n| n.id == *id))
        .map(|(id, _)| *id)
        .collect();
    assert!(lost.is_empty(), "not found by their own vector: {lost:?}");
}

fn a_big_batch_is_linked_in_parallel_and_found(engine: IndexEngine) {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().expect("pool");
    let rows = items(&clustered(3, 3_000), 0);
    let index = VectorIndex::new(DIM, 0, IndexParams { exact_below: 0, ..default_params(engine) });
    pool.install(|| index.insert_batch(&rows));
    let found = rows.iter().filter(|(id, v)| index.search(v, 1, &|_| true, rows.len())[0].id == *id).count();
    assert!(found as f64 >= 0.99 * rows.len() as f64, "{found} of {} find themselves first", rows.len());
}

// ---- save and load ----

fn save_then_load_gives_identical_results(engine: IndexEngine) {
    let f = fixture(engine);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("generation-1").join("index");
    f.index.save(&path).expect("save");
    // Saving again replaces the directory in place.
    f.index.save(&path).expect("save over an existing index");
    let loaded = VectorIndex::load(&path, f.index.params()).expect("load");
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

fn a_loaded_index_keeps_growing_and_saves_over_itself(engine: IndexEngine) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, index) = saved(tmp.path(), engine, 3_000);
    let loaded = VectorIndex::load(&path, index.params()).expect("load");
    let more = items(&clustered(8, 100), 10_000);
    loaded.insert_batch(&more);
    assert_eq!(loaded.search(&more[5].1, 1, &|_| true, loaded.len())[0].id, more[5].0);
    loaded.save(&path).expect("save again");
    let reloaded = VectorIndex::load(&path, index.params()).expect("reload");
    assert_eq!(reloaded.len(), index.len() + more.len());
    assert_eq!(reloaded.search(&more[7].1, 1, &|_| true, reloaded.len())[0].id, more[7].0);
}

/// A process that saved and went away: the next one loads the directory alone and answers
/// as the first did, and as exactly as a fresh build.
fn restart_loads_what_was_saved_before_drop(engine: IndexEngine) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vectors = clustered(42, 3_000);
    let queries = clustered(42, 3_050).split_off(3_000);
    let params = graph_params(engine);
    let before: Vec<Vec<Neighbour>> = {
        let index = build(&vectors, params.clone());
        index.save(&tmp.path().join("index")).expect("save");
        queries.iter().map(|q| index.search(q, K, &|_| true, vectors.len())).collect()
    };
    let loaded = VectorIndex::load(&tmp.path().join("index"), &params).expect("load after drop");
    let mut found = 0;
    for (query, answer) in queries.iter().zip(&before) {
        let hits = loaded.search(query, K, &|_| true, vectors.len());
        assert_eq!(&hits, answer);
        found += found_of(&hits, &brute_force(&vectors, query, K, &|_| true));
    }
    assert!(found as f64 >= 0.95 * (K * queries.len()) as f64, "recall after restart {found}");
}

fn empty_index_round_trips(engine: IndexEngine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("empty");
    VectorIndex::new(DIM, 0, default_params(engine)).save(&path).expect("save");
    let loaded = VectorIndex::load(&path, &default_params(engine)).expect("load");
    assert!(loaded.is_empty());
    assert_eq!(loaded.dim(), DIM);
    loaded.insert_batch(&items(&clustered(1, 3), 0));
    assert_eq!(loaded.len(), 3);
}

/// `ids` lists what is stored, out of order as inserted and across a save and load: what a restart
/// compares with the stored items to find the ones a snapshot lacks.
fn ids_list_every_stored_point_also_after_a_load(engine: IndexEngine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ids");
    let index = VectorIndex::new(DIM, 0, default_params(engine));
    assert!(index.ids().is_empty());
    let points = clustered(1, 4);
    let batch: Vec<(u64, Vec<f32>)> = [9u64, 2, 40, 7].into_iter().zip(points).collect();
    index.insert_batch(&batch);
    let expected: std::collections::HashSet<u64> = [2, 7, 9, 40].into();
    assert_eq!(index.ids(), expected);
    index.save(&path).expect("save");
    assert_eq!(VectorIndex::load(&path, &default_params(engine)).expect("load").ids(), expected);
}

fn configured_search_params_win_over_saved_ones(engine: IndexEngine) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, index) = saved(tmp.path(), engine, 3_000);
    let configured = IndexParams { engine, ef_search: 123, exact_below: 5, max_nb_connection: 8, ef_construction: 50 };
    let loaded = VectorIndex::load(&path, &configured).expect("load");
    assert_eq!(loaded.params().ef_search, 123);
    assert_eq!(loaded.params().exact_below, 5);
    // The graph's shape is what it was built with.
    assert_eq!(loaded.params().max_nb_connection, index.params().max_nb_connection);
    assert_eq!(loaded.params().ef_construction, index.params().ef_construction);
}

fn loading_under_another_engine_is_an_error(engine: IndexEngine) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, _) = saved(tmp.path(), engine, 300);
    for other in IndexEngine::ALL.into_iter().filter(|&e| e != engine) {
        let err = VectorIndex::load(&path, &default_params(other)).err().expect("must not load");
        assert!(format!("{err:#}").contains("engine"), "{err:#}");
    }
    let empty = tmp.path().join("empty");
    VectorIndex::new(DIM, 0, default_params(engine)).save(&empty).expect("save");
    for other in IndexEngine::ALL.into_iter().filter(|&e| e != engine) {
        assert!(VectorIndex::load(&empty, &default_params(other)).is_err(), "an empty index records its engine too");
    }
}

fn saved(dir: &Path, engine: IndexEngine, n: usize) -> (PathBuf, VectorIndex) {
    let index = build(&clustered(7, n), IndexParams { exact_below: 0, ..default_params(engine) });
    let path = dir.join("index");
    index.save(&path).expect("save");
    (path, index)
}

/// The graph files `index.json` names (the native `graph.bin`, or hnsw_rs's dump, graph
/// first), with where each one's digest sits in the JSON.
fn graph_files(dir: &Path) -> Vec<(PathBuf, Vec<serde_json::Value>)> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("read")).expect("json");
    let mut files = Vec::new();
    if meta["graph"].is_object() {
        files.push((dir.join(meta["graph"]["name"].as_str().expect("name")), vec!["graph".into()]));
    }
    for (at, file) in meta["dump"].as_array().into_iter().flatten().enumerate() {
        files.push((dir.join(file["name"].as_str().expect("name")), vec!["dump".into(), at.into()]));
    }
    assert!(!files.is_empty(), "a saved non-empty index names its graph files");
    files
}

fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).expect("read");
    change(&mut bytes);
    std::fs::write(path, bytes).expect("write");
}

/// Changes the first graph file and records its new checksum in `index.json`, so the
/// damage gets past the checksum to the engine's own reader.
fn rewrite_with_checksum(dir: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let (path, at) = graph_files(dir).swap_remove(0);
    rewrite(&path, change);
    let bytes = std::fs::read(&path).expect("read");
    let meta_path = dir.join("index.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).expect("read")).expect("json");
    let mut digest = &mut meta;
    for key in &at {
        digest = match key {
            serde_json::Value::String(name) => &mut digest[name.as_str()],
            index => &mut digest[index.as_u64().expect("position") as usize],
        };
    }
    digest["sha256"] = hex::encode(Sha256::digest(&bytes)).into();
    digest["bytes"] = bytes.len().into();
    std::fs::write(&meta_path, meta.to_string()).expect("write");
}

fn loading_a_missing_or_damaged_directory_is_an_error(engine: IndexEngine) {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(VectorIndex::load(&dir.path().join("absent"), &default_params(engine)).is_err());

    type Damage = fn(&Path);
    let damages: [(&str, Damage); 10] = [
        ("missing directory", |p| std::fs::remove_dir_all(p).expect("remove")),
        ("garbage index.json", |p| std::fs::write(p.join("index.json"), b"{not json").expect("write")),
        ("missing graph", |p| std::fs::remove_file(&graph_files(p)[0].0).expect("remove")),
        ("missing last file", |p| std::fs::remove_file(&graph_files(p).last().expect("a file").0).expect("remove")),
        ("truncated graph", |p| rewrite(&graph_files(p)[0].0, |b| b.truncate(b.len() / 2))),
        ("flipped byte 40", |p| rewrite(&graph_files(p)[0].0, |b| b[40] ^= 0xFF)),
        ("flipped byte 100 of the last file", |p| {
            rewrite(&graph_files(p).last().expect("a file").0, |b| b[100] ^= 0x10)
        }),
        ("truncated graph, checksum updated", |p| rewrite_with_checksum(p, |b| b.truncate(b.len() - 4))),
        ("bad magic, checksum updated", |p| {
            rewrite_with_checksum(p, |b| b[..4].copy_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]))
        }),
        ("old format", |p| {
            let meta_path = p.join("index.json");
            let text = std::fs::read_to_string(&meta_path).expect("read");
            std::fs::write(&meta_path, text.replace("\"format_version\": 2", "\"format_version\": 1")).expect("write");
        }),
    ];
    for (what, damage) in damages {
        let case = tempfile::tempdir().expect("tempdir");
        let (path, _) = saved(case.path(), engine, 300);
        assert!(VectorIndex::load(&path, &default_params(engine)).is_ok(), "{what}: intact copy loads");
        damage(&path);
        assert!(VectorIndex::load(&path, &default_params(engine)).is_err(), "{what}: must not load");
    }
}

/// Native only: the file's own validation catches a link to a node that does not exist
/// (the checksum was recomputed, as a bug in a writer would).
#[test]
fn native_a_counted_link_out_of_range_fails_to_load() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, index) = saved(tmp.path(), IndexEngine::Native, 3_000);
    let len = index.len();
    let m = index.params().max_nb_connection;
    // The first node's layer-0 block starts after the header, ids, levels and vectors.
    let layer0 = 8 + 5 * 8 + len * 8 + len + len * DIM * 4;
    rewrite_with_checksum(&path, |b| {
        let count = u32::from_le_bytes([b[layer0], b[layer0 + 1], b[layer0 + 2], b[layer0 + 3]]);
        assert!(count > 0 && count as usize <= 2 * m);
        b[layer0 + 4..layer0 + 8].copy_from_slice(&(len as u32).to_le_bytes());
    });
    let err = VectorIndex::load(&path, index.params()).err().expect("must not load");
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
}

#[test]
#[ignore = "timing: 60,000 x 1280-d unless TIMING_N / TIMING_DIM say otherwise; run with --ignored --nocapture"]
fn load_is_faster_than_rebuild() {
    let setting = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (n, dim) = (setting("TIMING_N", 60_000), setting("TIMING_DIM", 1280));
    let mut rng = Rng(2026);
    let items: Vec<(u64, Vec<f32>)> = (0..n as u64).map(|id| (id, random_unit(&mut rng, dim))).collect();
    for engine in IndexEngine::ALL {
        let params = default_params(engine);
        let start = Instant::now();
        let index = VectorIndex::new(dim, n, params.clone());
        index.insert_batch(&items);
        let rebuild = start.elapsed();

        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let path = dir.path().join("index");
        let start = Instant::now();
        index.save(&path).expect("save");
        let save = start.elapsed();
        let start = Instant::now();
        let loaded = VectorIndex::load(&path, &params).expect("load");
        let load = start.elapsed();
        assert_eq!(loaded.len(), n);
        let query = &items[123].1;
        assert_eq!(loaded.search(query, K, &|_| true, n), index.search(query, K, &|_| true, n));
        let bytes: u64 = std::fs::read_dir(&path)
            .expect("list")
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!(
            "{engine}: {n} x {dim}: rebuild (parallel insert) {rebuild:.2?}, save {save:.2?}, \
             load (checksums + graph) {load:.2?}, {:.0} MB on disk, {} threads",
            bytes as f64 / 1e6,
            rayon::current_num_threads()
        );
    }
}
