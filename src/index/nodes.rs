//! The graph's storage: every node's vector, caller id, level and neighbour lists.
//!
//! Owns [`Nodes`]. A node is an internal `u32`, its position in insertion order. Vectors lie
//! in one contiguous `f32` array (`node × dim`), the caller's ids in a `u64` table beside it,
//! and neighbour lists in fixed-capacity blocks of `u32` (a count, then the slots): one block
//! per node for layer 0 in one flat array (`2M` slots), and per node above layer 0 one small
//! boxed array holding its upper layers (`M` slots each).
//!
//! Concurrency: `Nodes` lives behind the graph's `RwLock`. Appending nodes needs `&mut` (the
//! write lock, held only while a batch is copied in); everything else works through `&`.
//! Neighbour slots are `AtomicU32`s: a node's lists are changed only under that node's own
//! mutex ([`Nodes::lock`]), and read without it, with relaxed loads, by searches. A search
//! that races a change may see a list half old and half new; every slot always names an
//! existing node, so it just walks a slightly different path. Vectors and ids are written
//! before a node is linked and never change after.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Highest layer a node may live on (levels are drawn so this is practically never hit).
pub(super) const MAX_LEVEL: u8 = 15;

/// Cache lines of a list to prefetch: a layer-0 list of 2 × 16 slots and its count is 132 bytes.
const LIST_PREFETCH_LINES: usize = 3;

/// Cache lines of a vector to prefetch while the one before it is compared.
const VECTOR_PREFETCH_LINES: usize = 8;

pub(super) struct Nodes {
    pub(super) dim: usize,
    /// Slots per upper-layer list (HNSW's M).
    pub(super) m: usize,
    /// Slots per layer-0 list (2M).
    pub(super) m0: usize,
    pub(super) ids: Vec<u64>,
    pub(super) levels: Vec<u8>,
    pub(super) vectors: Vec<f32>,
    /// `len × (1 + m0)`: per node, the count, then the slots.
    pub(super) layer0: Vec<AtomicU32>,
    /// Per node, `level × (1 + m)`: layer 1's count and slots, then layer 2's, …
    pub(super) upper: Vec<Box<[AtomicU32]>>,
    locks: Vec<Mutex<()>>,
}

impl Nodes {
    pub(super) fn new(dim: usize, m: usize, capacity: usize) -> Self {
        let m0 = 2 * m;
        Nodes {
            dim,
            m,
            m0,
            ids: Vec::with_capacity(capacity),
            levels: Vec::with_capacity(capacity),
            vectors: Vec::with_capacity(capacity.saturating_mul(dim)),
            layer0: Vec::with_capacity(capacity.saturating_mul(1 + m0)),
            upper: Vec::with_capacity(capacity),
            locks: Vec::with_capacity(capacity),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Makes room for `more` nodes so a batch grows every table once.
    pub(super) fn reserve(&mut self, more: usize) {
        self.ids.reserve(more);
        self.levels.reserve(more);
        self.vectors.reserve(more.saturating_mul(self.dim));
        self.layer0.reserve(more.saturating_mul(1 + self.m0));
        self.upper.reserve(more);
        self.locks.reserve(more);
    }

    /// Appends an unlinked node and returns its internal id.
    pub(super) fn push(&mut self, id: u64, vector: &[f32], level: u8) -> u32 {
        debug_assert_eq!(vector.len(), self.dim);
        debug_assert!(level <= MAX_LEVEL);
        let node = u32::try_from(self.len()).expect("an index holds fewer than 2^32 points");
        self.ids.push(id);
        self.levels.push(level);
        self.vectors.extend_from_slice(vector);
        self.layer0.extend((0..1 + self.m0).map(|_| AtomicU32::new(0)));
        self.upper.push((0..usize::from(level) * (1 + self.m)).map(|_| AtomicU32::new(0)).collect());
        self.locks.push(Mutex::new(()));
        node
    }

    pub(super) fn vector(&self, node: u32) -> &[f32] {
        let start = node as usize * self.dim;
        &self.vectors[start..start + self.dim]
    }

    pub(super) fn id(&self, node: u32) -> u64 {
        self.ids[node as usize]
    }

    pub(super) fn level(&self, node: u32) -> u8 {
        self.levels[node as usize]
    }

    /// How many slots a list on `layer` has.
    pub(super) fn capacity(&self, layer: u8) -> usize {
        if layer == 0 { self.m0 } else { self.m }
    }

    /// The block (count, then slots) of `node`'s list on `layer`, which must be at most its level.
    fn block(&self, node: u32, layer: u8) -> &[AtomicU32] {
        debug_assert!(layer <= self.level(node));
        if layer == 0 {
            let start = node as usize * (1 + self.m0);
            &self.layer0[start..start + 1 + self.m0]
        } else {
            let start = (usize::from(layer) - 1) * (1 + self.m);
            &self.upper[node as usize][start..start + 1 + self.m]
        }
    }

    /// Calls `f` with each neighbour of `node` on `layer`, as of now (see the module notes).
    #[inline]
    pub(super) fn for_each_neighbour(&self, node: u32, layer: u8, mut f: impl FnMut(u32)) {
        let block = self.block(node, layer);
        let count = (block[0].load(Ordering::Relaxed) as usize).min(block.len() - 1);
        for slot in &block[1..=count] {
            f(slot.load(Ordering::Relaxed));
        }
    }

    /// Starts loading `node`'s list on `layer` into cache (a search about to expand it).
    #[inline]
    pub(super) fn prefetch_neighbours(&self, node: u32, layer: u8) {
        prefetch_lines(self.block(node, layer), LIST_PREFETCH_LINES);
    }

    /// Starts loading `node`'s vector into cache: the next comparison then finds it there.
    #[inline(always)]
    pub(super) fn prefetch_vector(&self, node: u32) {
        prefetch_lines(self.vector(node), VECTOR_PREFETCH_LINES);
    }

    /// Replaces `node`'s list on `layer`; the caller holds the node's lock.
    pub(super) fn set_neighbours(&self, node: u32, layer: u8, neighbours: &[u32]) {
        let block = self.block(node, layer);
        debug_assert!(neighbours.len() < block.len());
        for (slot, &n) in block[1..].iter().zip(neighbours) {
            slot.store(n, Ordering::Relaxed);
        }
        block[0].store(neighbours.len() as u32, Ordering::Relaxed);
    }

    /// Appends `neighbour` to a list known to have room; the caller holds the node's lock.
    pub(super) fn push_neighbour(&self, node: u32, layer: u8, neighbour: u32) {
        let block = self.block(node, layer);
        let count = block[0].load(Ordering::Relaxed) as usize;
        debug_assert!(count + 1 < block.len());
        block[1 + count].store(neighbour, Ordering::Relaxed);
        block[0].store(count as u32 + 1, Ordering::Relaxed);
    }

    pub(super) fn neighbour_count(&self, node: u32, layer: u8) -> usize {
        self.block(node, layer)[0].load(Ordering::Relaxed) as usize
    }

    /// The lock that serialises changes to `node`'s lists (never held for two nodes at once).
    pub(super) fn lock(&self, node: u32) -> MutexGuard<'_, ()> {
        self.locks[node as usize].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Rebuilds the tables from a file's parts (see `persist`); the caller has validated them.
    pub(super) fn from_parts(
        dim: usize,
        m: usize,
        ids: Vec<u64>,
        levels: Vec<u8>,
        vectors: Vec<f32>,
        layer0: Vec<u32>,
        upper: Vec<Box<[u32]>>,
    ) -> Self {
        let len = ids.len();
        Nodes {
            dim,
            m,
            m0: 2 * m,
            ids,
            levels,
            vectors,
            layer0: layer0.into_iter().map(AtomicU32::new).collect(),
            upper: upper.into_iter().map(|lists| lists.iter().map(|&n| AtomicU32::new(n)).collect()).collect(),
            locks: (0..len).map(|_| Mutex::new(())).collect(),
        }
    }
}

/// Prefetches the first `lines` cache lines of `data` (fewer if it is shorter).
#[inline(always)]
fn prefetch_lines<T>(data: &[T], lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(data);
        let base = data.as_ptr().cast::<i8>();
        for line in 0..lines.min(bytes.div_ceil(64)) {
            // SAFETY: a prefetch never faults and reads nothing; the address lies inside `data`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(line * 64)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, lines);
}
