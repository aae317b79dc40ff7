//! The graph's guarantees checked against brute force on clustered random vectors: recall,
//! filters and deletions, inserts racing searches, and save/load (round trip, damage).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use super::*;

const DIM: usize = 32;
const CLUSTERS: usize = 40;
const K: usize = 10;

/// splitmix64, so the tests need no random-number crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn symmetric(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

/// `n` unit vectors around `CLUSTERS` centres, like a catalogue's embeddings.
fn clustered(seed: u64, n: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS).map(|_| unit((0..DIM).map(|_| rng.symmetric()).collect())).collect();
    (0..n)
        .map(|_| {
            let centre = &centres[(rng.next() % CLUSTERS as u64) as usize];
            unit(centre.iter().map(|c| c + 0.3 * rng.symmetric()).collect())
        })
        .collect()
}

/// Ids `10 × row + 7`: never the graph's internal positions.
fn items(vectors: &[Vec<f32>], first_row: usize) -> Vec<(u64, Vec<f32>)> {
    vectors.iter().enumerate().map(|(i, v)| (10 * (first_row + i) as u64 + 7, v.clone())).collect()
}

fn brute_force(items: &[(u64, Vec<f32>)], query: &[f32], k: usize, keep: &dyn Fn(u64) -> bool) -> Vec<Neighbour> {
    let mut all: Vec<Neighbour> = items
        .iter()
        .filter(|(id, _)| keep(*id))
        .map(|(id, v)| Neighbour { id: *id, distance: unit_cosine_distance(query, v) })
        .collect();
    all.sort_by(by_distance_then_id);
    all.truncate(k);
    all
}

fn recall(found: &[Neighbour], exact: &[Neighbour]) -> usize {
    let exact: HashSet<u64> = exact.iter().map(|n| n.id).collect();
    found.iter().filter(|n| exact.contains(&n.id)).count()
}

fn built(n: usize, params: IndexParams) -> (VectorIndex, Vec<(u64, Vec<f32>)>) {
    let rows = items(&clustered(7, n), 0);
    let index = VectorIndex::new(DIM, n, params);
    index.insert_batch(&rows);
    (index, rows)
}

#[test]
fn recall_at_10_is_at_least_095_at_default_params() {
    let (index, rows) = built(4_000, IndexParams::default());
    assert!(index.len() > index.params().exact_below, "the graph, not the scan, must answer");
    let queries = clustered(99, 200);
    let mut found = 0;
    for query in &queries {
        let hits = index.search(query, K, &|_| true, rows.len());
        assert_eq!(hits.len(), K);
        assert!(hits.windows(2).all(|w| by_distance_then_id(&w[0], &w[1]).is_lt()), "sorted, no duplicates");
        found += recall(&hits, &brute_force(&rows, query, K, &|_| true));
    }
    let recall = found as f64 / (queries.len() * K) as f64;
    assert!(recall >= 0.95, "recall@10 {recall}");
}

#[test]
fn filtered_and_deleted_ids_are_walked_through_but_never_reported() {
    let params = IndexParams { exact_below: 0, ..IndexParams::default() };
    let (index, rows) = built(4_000, params);
    let queries = clustered(5, 100);
    // A label filter broad enough for the graph (more than `EXACT_MATCHING_PER_EF × ef` match).
    let labelled = |id: u64| id % 3 == 1;
    let matching = rows.iter().filter(|(id, _)| labelled(*id)).count();
    assert!(matching > EXACT_MATCHING_PER_EF * index.params().ef_search);
    let mut found = 0;
    for query in &queries {
        let hits = index.search(query, K, &labelled, matching);
        assert_eq!(hits.len(), K);
        assert!(hits.iter().all(|n| labelled(n.id)));
        found += recall(&hits, &brute_force(&rows, query, K, &labelled));
    }
    assert!(found as f64 / (queries.len() * K) as f64 >= 0.9, "filtered recall {found}");

    // Deletions: each query's exact nearest are deleted, and must not come back.
    for query in &queries {
        let deleted: HashSet<u64> = brute_force(&rows, query, 5, &|_| true).iter().map(|n| n.id).collect();
        let alive = |id: u64| !deleted.contains(&id);
        let hits = index.search(query, K, &alive, rows.len() - deleted.len());
        assert_eq!(hits.len(), K);
        assert!(hits.iter().all(|n| alive(n.id)));
        // A filter matching few ids is answered exactly.
        let few = |id: u64| id % 1000 == 7;
        let few_count = rows.iter().filter(|(id, _)| few(*id)).count();
        assert_eq!(index.search(query, K, &few, few_count), brute_force(&rows, query, K, &few));
    }
}

#[test]
fn ties_are_broken_by_id() {
    let v = unit((0..DIM).map(|i| i as f32).collect());
    let index = VectorIndex::new(DIM, 8, IndexParams { exact_below: 0, ..IndexParams::default() });
    let rows: Vec<(u64, Vec<f32>)> = [9u64, 3, 7, 1, 5].iter().map(|&id| (id, v.clone())).collect();
    index.insert_batch(&rows);
    let ids: Vec<u64> = index.search(&v, 3, &|_| true, rows.len()).iter().map(|n| n.id).collect();
    assert_eq!(ids, [1, 3, 5]);
}

#[test]
fn inserts_racing_searches_lose_nothing() {
    // A wider beam than the default: the check below is that nothing is lost, not recall.
    let params = IndexParams { exact_below: 0, ef_search: 128, ..IndexParams::default() };
    let (index, first) = built(1_000, params);
    let more = items(&clustered(11, 3_000), first.len());
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for worker in 0..3 {
            let (index, done, first) = (&index, &done, &first);
            scope.spawn(move || {
                let mut round = 0;
                while !done.load(Ordering::Relaxed) {
                    let query = &first[(round * 31 + worker) % first.len()].1;
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
    assert_eq!(index.len(), first.len() + more.len());
    // Every node links out on layer 0, and almost every one is linked to (the heuristic may
    // prune a node out of all its neighbours' lists, as in any HNSW; its own links remain).
    let nodes = index.graph.read();
    let mut linked_to = vec![false; nodes.len()];
    for node in 0..nodes.len() as u32 {
        assert!(nodes.neighbour_count(node, 0) > 0, "node {node} has no links");
        nodes.for_each_neighbour(node, 0, |n| linked_to[n as usize] = true);
    }
    let orphans = linked_to.iter().filter(|&&l| !l).count();
    assert!(orphans * 100 <= nodes.len(), "{orphans} nodes nobody links to");
    drop(nodes);
    let everything: Vec<&(u64, Vec<f32>)> = first.iter().chain(&more).collect();
    let lost: Vec<u64> = everything
        .iter()
        .filter(|(id, v)| !index.search(v, K, &|_| true, everything.len()).iter().any(|n| n.id == *id))
        .map(|(id, _)| *id)
        .collect();
    assert!(lost.is_empty(), "not found by their own vector: {lost:?}");
}

#[test]
fn a_big_batch_is_linked_in_parallel_and_found() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().expect("pool");
    let rows = items(&clustered(3, 3_000), 0);
    let index = VectorIndex::new(DIM, 0, IndexParams { exact_below: 0, ..IndexParams::default() });
    pool.install(|| index.insert_batch(&rows));
    let found = rows.iter().filter(|(id, v)| index.search(v, 1, &|_| true, rows.len())[0].id == *id).count();
    assert!(found as f64 >= 0.99 * rows.len() as f64, "{found} of {} find themselves first", rows.len());
}

fn saved(dir: &Path) -> (PathBuf, VectorIndex) {
    let (index, _) = built(3_000, IndexParams { exact_below: 0, ..IndexParams::default() });
    let path = dir.join("index");
    index.save(&path).expect("save");
    (path, index)
}

#[test]
fn save_then_load_answers_identically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, index) = saved(tmp.path());
    let loaded = VectorIndex::load(&path).expect("load");
    assert_eq!((loaded.len(), loaded.dim(), loaded.params()), (index.len(), index.dim(), index.params()));
    let odd = |id: u64| id % 20 == 17;
    for query in clustered(42, 50) {
        assert_eq!(loaded.search(&query, K, &|_| true, index.len()), index.search(&query, K, &|_| true, index.len()));
        assert_eq!(loaded.search(&query, K, &odd, index.len() / 2), index.search(&query, K, &odd, index.len() / 2));
    }
    // A loaded index keeps growing like a built one.
    let more = items(&clustered(8, 100), 10_000);
    loaded.insert_batch(&more);
    assert_eq!(loaded.search(&more[5].1, 1, &|_| true, loaded.len())[0].id, more[5].0);
    // Saving over an existing directory replaces it.
    loaded.save(&path).expect("save again");
    assert_eq!(VectorIndex::load(&path).expect("reload").len(), index.len() + more.len());
}

#[test]
fn configured_search_params_win_over_saved_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, index) = saved(tmp.path());
    let configured = IndexParams { ef_search: 123, exact_below: 5, max_nb_connection: 8, ef_construction: 50 };
    let loaded = VectorIndex::load(&path).expect("load").with_search_params(&configured);
    assert_eq!(loaded.params().ef_search, 123);
    assert_eq!(loaded.params().exact_below, 5);
    // The graph's shape is what it was built with.
    assert_eq!(loaded.params().max_nb_connection, index.params().max_nb_connection);
}

/// Rewrites `graph.bin` and records its new checksum, so the damage gets past the checksum.
fn rewrite_with_checksum(dir: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let graph = dir.join("graph.bin");
    let mut bytes = std::fs::read(&graph).expect("read");
    change(&mut bytes);
    std::fs::write(&graph, &bytes).expect("write");
    let meta_path = dir.join("index.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).expect("read")).expect("json");
    meta["graph"]["sha256"] = hex::encode(Sha256::digest(&bytes)).into();
    meta["graph"]["bytes"] = bytes.len().into();
    std::fs::write(&meta_path, meta.to_string()).expect("write");
}

#[test]
fn damaged_directories_fail_to_load() {
    type Damage = fn(&Path);
    let damages: [(&str, Damage); 7] = [
        ("missing directory", |p| std::fs::remove_dir_all(p).expect("remove")),
        ("missing graph", |p| std::fs::remove_file(p.join("graph.bin")).expect("remove")),
        ("truncated graph", |p| {
            let bytes = std::fs::read(p.join("graph.bin")).expect("read");
            std::fs::write(p.join("graph.bin"), &bytes[..bytes.len() / 2]).expect("write");
        }),
        ("flipped byte", |p| {
            let mut bytes = std::fs::read(p.join("graph.bin")).expect("read");
            bytes[100] ^= 0x10;
            std::fs::write(p.join("graph.bin"), &bytes).expect("write");
        }),
        ("truncated graph, checksum updated", |p| rewrite_with_checksum(p, |b| b.truncate(b.len() - 4))),
        ("bad magic, checksum updated", |p| rewrite_with_checksum(p, |b| b[0] ^= 0xFF)),
        ("old format", |p| {
            let meta_path = p.join("index.json");
            let text = std::fs::read_to_string(&meta_path).expect("read");
            std::fs::write(&meta_path, text.replace("\"format_version\": 2", "\"format_version\": 1")).expect("write");
        }),
    ];
    for (what, damage) in damages {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (path, _) = saved(tmp.path());
        damage(&path);
        let result = VectorIndex::load(&path);
        assert!(result.is_err(), "{what}: must not load");
    }
}

#[test]
fn a_counted_link_out_of_range_fails_to_load() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, index) = saved(tmp.path());
    let len = index.len();
    let m = index.params().max_nb_connection;
    // The first node's layer-0 block starts after the header, ids, levels and vectors.
    let layer0 = 8 + 5 * 8 + len * 8 + len + len * DIM * 4;
    rewrite_with_checksum(&path, |b| {
        let count = u32::from_le_bytes([b[layer0], b[layer0 + 1], b[layer0 + 2], b[layer0 + 3]]);
        assert!(count > 0 && count as usize <= 2 * m);
        b[layer0 + 4..layer0 + 8].copy_from_slice(&(len as u32).to_le_bytes());
    });
    let err = VectorIndex::load(&path).err().expect("must not load");
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
}
