//! lookalike's HNSW graph (Malkov & Yashunin, "Efficient and robust approximate nearest
//! neighbor search using Hierarchical Navigable Small World graphs", 2016/2018).
//!
//! Owns [`Graph`]: inserting nodes and searching them. A node's level is drawn as
//! `⌊−ln U · 1/ln M⌋`; a search descends greedily from the entry point (the top node)
//! through the upper layers, then runs an `ef`-bounded beam search on layer 0. An insert
//! does the same at `ef_construction` on each of its layers and links the new node to
//! neighbours chosen by the paper's heuristic (a candidate is kept only if it is nearer the
//! new node than to every neighbour already kept), which the chosen neighbours apply again
//! to their own lists when those are full.
//!
//! Concurrency: every method takes `&self`. [`Graph::insert_batch`] copies a batch in under
//! the storage's write lock (brief: vectors and empty lists), then links its nodes in
//! parallel on the rayon pool under the read lock, each list changed under its node's own
//! mutex (see `nodes`). Searches take the read lock, so they run during the linking and wait
//! only while a batch is copied in. Batches must not overlap (`VectorIndex` serialises them).
//! A node that raises the top level holds `entry_lock` while it links, as the paper's
//! single-threaded algorithm assumes one entry point at a time.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use rayon::prelude::*;

use super::Neighbour;
use super::distance::{DotFn, clamp_distance, dot_kernel};
use super::nodes::{MAX_LEVEL, Nodes};
use super::scratch::{Candidate, Scratch, with_scratch};

/// `entry` when the graph is empty.
const NO_ENTRY: u64 = u64::MAX;

/// Batches smaller than this are linked on the calling thread (a rayon round trip costs
/// more than linking a handful of nodes).
const PARALLEL_BATCH: usize = 64;

pub(crate) struct Graph {
    /// Links per upper-layer list (M); layer 0 keeps `2M`.
    m: usize,
    ef_construction: usize,
    /// The level multiplier `1/ln M`.
    level_scale: f64,
    nodes: RwLock<Nodes>,
    /// The entry point: `level << 32 | node`, or [`NO_ENTRY`].
    entry: AtomicU64,
    /// Held by an insert that will raise the top level, for the whole of its linking.
    entry_lock: Mutex<()>,
    dot: DotFn,
}

impl Graph {
    pub(crate) fn new(dim: usize, m: usize, ef_construction: usize, capacity: usize) -> Self {
        Graph::from_nodes(Nodes::new(dim, m, capacity), None, ef_construction)
    }

    /// A graph over loaded storage; `entry` is the top node and its level.
    pub(super) fn from_nodes(nodes: Nodes, entry: Option<(u32, u8)>, ef_construction: usize) -> Self {
        let m = nodes.m;
        Graph {
            m,
            ef_construction: ef_construction.max(1),
            level_scale: 1.0 / (m.max(2) as f64).ln(),
            nodes: RwLock::new(nodes),
            entry: AtomicU64::new(entry.map_or(NO_ENTRY, |(node, level)| pack_entry(node, level))),
            entry_lock: Mutex::new(()),
            dot: dot_kernel(),
        }
    }

    /// Shared access to the storage, for scans and dumps; inserts wait while it is held.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, Nodes> {
        self.nodes.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    /// Calls `visit` with every stored point's caller id and vector, in insertion order
    /// (exact scans); inserts wait until it returns.
    pub(crate) fn for_each_point(&self, mut visit: impl FnMut(u64, &[f32])) {
        let nodes = self.read();
        for (&id, vector) in nodes.ids.iter().zip(nodes.vectors.chunks_exact(nodes.dim)) {
            visit(id, vector);
        }
    }

    /// The top node and its level, `None` while the graph is empty.
    pub(super) fn entry(&self) -> Option<(u32, u8)> {
        let packed = self.entry.load(Ordering::Acquire);
        (packed != NO_ENTRY).then_some((packed as u32, (packed >> 32) as u8))
    }

    fn set_entry(&self, node: u32, level: u8) {
        self.entry.store(pack_entry(node, level), Ordering::Release);
    }

    #[inline]
    fn distance(&self, a: &[f32], b: &[f32]) -> f32 {
        1.0 - (self.dot)(a, b)
    }

    /// Adds `items` (caller id, vector of the graph's dimension). Not to be called for two
    /// batches at once.
    pub(crate) fn insert_batch(&self, items: &[(u64, Vec<f32>)]) {
        let first = {
            let mut nodes = self.nodes.write().unwrap_or_else(|poisoned| poisoned.into_inner());
            let first = nodes.len();
            nodes.reserve(items.len());
            for (offset, (id, vector)) in items.iter().enumerate() {
                let level = self.draw_level(first + offset);
                nodes.push(*id, vector, level);
            }
            first
        };
        let nodes = self.read();
        let end = nodes.len();
        if items.len() < PARALLEL_BATCH {
            with_scratch(|scratch| (first..end).for_each(|node| self.link(&nodes, node as u32, scratch)));
            return;
        }
        // Every worker takes the next node in order, so the graph grows as a sequential build
        // would (rayon's range splitting would start half the workers mid-batch).
        let next = AtomicUsize::new(first);
        (0..rayon::current_num_threads()).into_par_iter().for_each(|_| {
            with_scratch(|scratch| {
                loop {
                    let node = next.fetch_add(1, Ordering::Relaxed);
                    if node >= end {
                        break;
                    }
                    self.link(&nodes, node as u32, scratch);
                }
            })
        });
    }

    /// A node's level: `⌊−ln U / ln M⌋` with `U` uniform in (0, 1], drawn from a hash of its
    /// position so that a build is reproducible.
    fn draw_level(&self, position: usize) -> u8 {
        let bits = crate::rng::splitmix64(position as u64 ^ 0x6c6f_6f6b_616c_696b);
        let uniform = ((bits >> 11) + 1) as f64 / (1u64 << 53) as f64;
        let level = (-uniform.ln() * self.level_scale).floor();
        if level >= f64::from(MAX_LEVEL) { MAX_LEVEL } else { level as u8 }
    }

    /// Links the stored but unlinked `node` into every layer up to its level.
    fn link(&self, nodes: &Nodes, node: u32, scratch: &mut Scratch) {
        let level = nodes.level(node);
        let query = nodes.vector(node);
        let mut raising = None;
        let mut entry = self.entry();
        if entry.is_none_or(|(_, top)| level > top) {
            raising = Some(self.entry_lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            entry = self.entry();
        }
        let Some((entry_node, top)) = entry else {
            self.set_entry(node, level);
            return;
        };
        if level <= top {
            drop(raising.take());
        }
        let mut nearest = Candidate { distance: self.distance(query, nodes.vector(entry_node)), node: entry_node };
        for layer in (level + 1..=top).rev() {
            nearest = self.greedy(nodes, query, nearest, layer);
        }
        for layer in (0..=level.min(top)).rev() {
            self.search_layer(nodes, query, nearest, self.ef_construction, layer, None, scratch);
            let Scratch { results, sorted, chosen, pruning, kept, .. } = scratch;
            sorted.clear();
            sorted.extend(results.drain().filter(|c| c.node != node));
            sorted.sort_unstable();
            if let Some(&closest) = sorted.first() {
                nearest = closest;
            }
            self.select(nodes, sorted, self.m, chosen);
            self.set_own_links(nodes, node, layer, chosen, pruning, kept);
            for &neighbour in chosen.iter() {
                self.add_link(nodes, neighbour, node, layer, pruning, kept);
            }
        }
        if raising.is_some() {
            self.set_entry(node, level);
        }
    }

    /// Gives the new `node` its `chosen` links on `layer`. Another insert may already have
    /// linked to it there: it reached `node` on a layer above, descended through it, and
    /// found nothing else on this still-empty list. Those links are kept too (pruned with the
    /// heuristic if all do not fit); overwriting them would leave that node unreachable.
    fn set_own_links(
        &self,
        nodes: &Nodes,
        node: u32,
        layer: u8,
        chosen: &[u32],
        pruning: &mut Vec<Candidate>,
        kept: &mut Vec<u32>,
    ) {
        let _own = nodes.lock(node);
        if nodes.neighbour_count(node, layer) == 0 {
            nodes.set_neighbours(node, layer, chosen);
            return;
        }
        let base = nodes.vector(node);
        pruning.clear();
        pruning.extend(chosen.iter().map(|&n| Candidate { distance: self.distance(base, nodes.vector(n)), node: n }));
        nodes.for_each_neighbour(node, layer, |n| {
            if !chosen.contains(&n) {
                pruning.push(Candidate { distance: self.distance(base, nodes.vector(n)), node: n });
            }
        });
        pruning.sort_unstable();
        self.select(nodes, pruning, nodes.capacity(layer), kept);
        nodes.set_neighbours(node, layer, kept);
    }

    /// The paper's neighbour-selection heuristic: walking `sorted` (nearest first), keeps a
    /// candidate only if it is nearer the base than to every one kept before, up to `cap`.
    /// Spreads links across directions instead of spending them all inside one cluster.
    fn select(&self, nodes: &Nodes, sorted: &[Candidate], cap: usize, out: &mut Vec<u32>) {
        out.clear();
        if sorted.len() <= cap {
            out.extend(sorted.iter().map(|c| c.node));
            return;
        }
        for candidate in sorted {
            if out.len() >= cap {
                break;
            }
            let vector = nodes.vector(candidate.node);
            let diverse = out.iter().all(|&kept| self.distance(vector, nodes.vector(kept)) >= candidate.distance);
            if diverse {
                out.push(candidate.node);
            }
        }
    }

    /// Adds `new` to `at`'s list on `layer`, pruning the list with the heuristic when full.
    fn add_link(&self, nodes: &Nodes, at: u32, new: u32, layer: u8, pruning: &mut Vec<Candidate>, kept: &mut Vec<u32>) {
        let _own = nodes.lock(at);
        let cap = nodes.capacity(layer);
        if nodes.neighbour_count(at, layer) < cap {
            nodes.push_neighbour(at, layer, new);
            return;
        }
        let base = nodes.vector(at);
        pruning.clear();
        nodes.for_each_neighbour(at, layer, |n| {
            pruning.push(Candidate { distance: self.distance(base, nodes.vector(n)), node: n });
        });
        pruning.push(Candidate { distance: self.distance(base, nodes.vector(new)), node: new });
        pruning.sort_unstable();
        self.select(nodes, pruning, cap, kept);
        nodes.set_neighbours(at, layer, kept);
    }

    /// Moves to the nearest neighbour on `layer` while that is nearer (the upper-layer descent).
    fn greedy(&self, nodes: &Nodes, query: &[f32], start: Candidate, layer: u8) -> Candidate {
        let mut best = start;
        loop {
            let current = best.node;
            nodes.for_each_neighbour(current, layer, |n| {
                let candidate = Candidate { distance: self.distance(query, nodes.vector(n)), node: n };
                if candidate < best {
                    best = candidate;
                }
            });
            if best.node == current {
                return best;
            }
        }
    }

    /// The `ef`-bounded beam search of one layer from `start`; leaves the best `ef` nodes
    /// that `accept` lets through in `scratch.results`. Nodes it rejects are still walked
    /// through, so a filter narrows the answer, not the path.
    #[allow(clippy::too_many_arguments)]
    fn search_layer(
        &self,
        nodes: &Nodes,
        query: &[f32],
        start: Candidate,
        ef: usize,
        layer: u8,
        accept: Option<&dyn Fn(u32) -> bool>,
        scratch: &mut Scratch,
    ) {
        let Scratch { visited, candidates, results, fresh, .. } = scratch;
        visited.start(nodes.len());
        candidates.clear();
        results.clear();
        visited.insert(start.node);
        candidates.push(std::cmp::Reverse(start));
        if accept.is_none_or(|accept| accept(start.node)) {
            results.push(start);
        }
        while let Some(std::cmp::Reverse(current)) = candidates.pop() {
            if results.len() >= ef && results.peek().is_some_and(|worst| current > *worst) {
                break;
            }
            fresh.clear();
            nodes.for_each_neighbour(current.node, layer, |n| {
                if visited.insert(n) {
                    fresh.push(n);
                }
            });
            if let Some(&first) = fresh.first() {
                nodes.prefetch_vector(first);
            }
            for (at, &n) in fresh.iter().enumerate() {
                if let Some(&next) = fresh.get(at + 1) {
                    nodes.prefetch_vector(next);
                }
                let candidate = Candidate { distance: self.distance(query, nodes.vector(n)), node: n };
                let promising = results.len() < ef || results.peek().is_none_or(|worst| candidate < *worst);
                if !promising {
                    continue;
                }
                // It will likely be expanded: start loading its list now.
                nodes.prefetch_neighbours(n, layer);
                candidates.push(std::cmp::Reverse(candidate));
                if accept.is_none_or(|accept| accept(n)) {
                    results.push(candidate);
                    if results.len() > ef {
                        results.pop();
                    }
                }
            }
        }
    }

    /// The `k` nearest nodes to `query` found at beam width `max(ef, k)`, among those whose
    /// caller id `filter` accepts (all when `None`), in no particular order.
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Vec<Neighbour> {
        let nodes = self.read();
        let Some((entry, top)) = self.entry() else {
            return Vec::new();
        };
        debug_assert!((entry as usize) < nodes.len());
        let view: &Nodes = &nodes;
        with_scratch(|scratch| {
            let mut nearest = Candidate { distance: self.distance(query, view.vector(entry)), node: entry };
            for layer in (1..=top).rev() {
                nearest = self.greedy(view, query, nearest, layer);
            }
            let by_id = filter.map(|filter| move |node: u32| filter(view.id(node)));
            let accept = by_id.as_ref().map(|f| f as &dyn Fn(u32) -> bool);
            self.search_layer(view, query, nearest, ef.max(k), 0, accept, scratch);
            while scratch.results.len() > k {
                scratch.results.pop();
            }
            scratch
                .results
                .drain()
                .map(|c| Neighbour { id: view.id(c.node), distance: clamp_distance(c.distance) })
                .collect()
        })
    }
}

fn pack_entry(node: u32, level: u8) -> u64 {
    u64::from(level) << 32 | u64::from(node)
}
