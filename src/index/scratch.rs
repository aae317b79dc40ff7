//! Per-thread working memory of graph searches and inserts, reused from one call to the next.
//!
//! Owns [`Scratch`] and [`with_scratch`]. A search needs a visited set, two heaps and a few
//! lists; allocating them per query costs as much as a short search. Each thread keeps one
//! `Scratch` in a thread-local and lends it to one call at a time; the visited set is an
//! array of epoch stamps (a node is visited when its stamp equals the current epoch), so
//! starting a search is one increment instead of clearing or hashing. The array is sized
//! by the largest graph the thread has searched and shared by every index it searches.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A node and its (unclamped) distance to whatever is being searched for. Ordered by
/// distance, then by node, so that equal distances resolve the same way every time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Candidate {
    pub(super) distance: f32,
    pub(super) node: u32,
}

impl Eq for Candidate {}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance.total_cmp(&other.distance).then(self.node.cmp(&other.node))
    }
}

/// Nodes seen by the current search: `marks[node] == epoch`.
#[derive(Default)]
pub(super) struct Visited {
    marks: Vec<u32>,
    epoch: u32,
}

impl Visited {
    /// Forgets every mark, for a graph of `len` nodes.
    pub(super) fn start(&mut self, len: usize) {
        if self.marks.len() < len {
            self.marks.resize(len, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Once every 2^32 searches: stamps from the previous cycle could match again.
            self.marks.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `node`; true if it was not marked yet.
    #[inline]
    pub(super) fn insert(&mut self, node: u32) -> bool {
        let mark = &mut self.marks[node as usize];
        let fresh = *mark != self.epoch;
        *mark = self.epoch;
        fresh
    }
}

#[derive(Default)]
pub(super) struct Scratch {
    pub(super) visited: Visited,
    /// Nodes still to expand, nearest first.
    pub(super) candidates: BinaryHeap<Reverse<Candidate>>,
    /// The best nodes found so far, farthest on top.
    pub(super) results: BinaryHeap<Candidate>,
    /// Unvisited neighbours of the node being expanded.
    pub(super) fresh: Vec<u32>,
    /// An insert's candidates, nearest first.
    pub(super) sorted: Vec<Candidate>,
    /// The neighbours an insert chose.
    pub(super) chosen: Vec<u32>,
    /// A neighbour's list being pruned, and what survives it.
    pub(super) pruning: Vec<Candidate>,
    pub(super) kept: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch (a fresh one if a caller up the stack holds it, e.g.
/// a filter that itself searches an index).
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        Err(_) => f(&mut Scratch::default()),
    })
}
