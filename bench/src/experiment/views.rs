//! Training inputs with a mirror view: the deep experiment's test of the mildest augmentation
//! that cached activations allow. Each item has two cached rows, its image's and its mirror
//! image's; every step draws, per item, one of the two (seeded by step and item, so a rerun
//! draws the same), and the frozen part still never runs during training.

use candle_core::Tensor;
use lookalike::rng::splitmix64;
use lookalike::train::BatchInputs;

/// `rows` holds the N originals, then the N mirrors, in item order.
pub struct MirrorViews {
    pub rows: Tensor,
    pub items: usize,
    pub seed: u64,
}

impl MirrorViews {
    /// Row of `item` at `step`: the original or, half the time, the mirror.
    fn row(&self, step: usize, item: usize) -> u32 {
        let draw = splitmix64(self.seed ^ splitmix64(((step as u64) << 32) | item as u64));
        (item + self.items * (draw & 1) as usize) as u32
    }
}

impl BatchInputs for MirrorViews {
    fn items(&self) -> candle_core::Result<usize> {
        Ok(self.items)
    }

    fn batch(&self, step: usize, items: &[usize]) -> candle_core::Result<Tensor> {
        let rows: Vec<u32> = items.iter().map(|&item| self.row(step, item)).collect();
        self.rows.index_select(&Tensor::new(rows, self.rows.device())?, 0)
    }
}
