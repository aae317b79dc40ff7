//! The arithmetic both scans share: dot products summed in one fixed order (so the AVX copies give
//! the same bits), unit-sphere distances and best-first candidate lists.

/// Whether the 8-lane sums of [`dot`] and [`dot4`] can run as single AVX instructions.
pub(super) fn has_avx() -> bool {
    crate::cpu::features().avx
}

/// Inserts `entry` into the best-first `list` of at most `capacity` entries. Candidates arrive in
/// ascending index order and only a strictly better distance overtakes, so ties keep the lower index.
pub(super) fn keep_best(
    list: &mut Vec<(f32, usize)>,
    entry: (f32, usize),
    capacity: usize,
    better: impl Fn(f32, f32) -> bool,
) {
    let position = list.iter().position(|&(d, _)| better(entry.0, d)).unwrap_or(list.len());
    if position < capacity {
        list.insert(position, entry);
        list.truncate(capacity);
    }
}

/// Euclidean distance between unit vectors through their dot product.
#[inline(always)]
pub(super) fn unit_distance(a: &[f32], b: &[f32]) -> f32 {
    (2.0 - 2.0 * dot(a, b)).max(0.0).sqrt()
}

/// Dot product over eight independent partial sums, so the compiler can vectorise it.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let (a_chunks, a_rest) = a.as_chunks::<LANES>();
    let (b_chunks, b_rest) = b.as_chunks::<LANES>();
    let mut partial = [0.0f32; LANES];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for ((sum, p), q) in partial.iter_mut().zip(x).zip(y) {
            *sum += p * q;
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(p, q)| p * q).sum();
    partial.iter().sum::<f32>() + rest
}

/// Four dot products against one vector `b` (all of its length), each summed exactly as [`dot`]
/// sums it.
#[inline(always)]
pub(super) fn dot4(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    const LANES: usize = 8;
    let (b_chunks, b_rest) = b.as_chunks::<LANES>();
    let split = b_chunks.len() * LANES;
    // Cut to `b`'s chunk count so that indexing below needs no bounds check.
    let a_chunks = a.map(|row| &row.as_chunks::<LANES>().0[..b_chunks.len()]);
    let mut partial = [[0.0f32; LANES]; 4];
    for (chunk, y) in b_chunks.iter().enumerate() {
        for (sums, rows) in partial.iter_mut().zip(&a_chunks) {
            for ((sum, p), q) in sums.iter_mut().zip(&rows[chunk]).zip(y) {
                *sum += p * q;
            }
        }
    }
    std::array::from_fn(|slot| {
        let rest: f32 = a[slot][split..].iter().zip(b_rest).map(|(p, q)| p * q).sum();
        partial[slot].iter().sum::<f32>() + rest
    })
}
