//! The SIMD features of the CPU the process runs on, detected once.
//!
//! The crate is built for baseline x86-64, so every kernel with AVX, AVX2+FMA or AVX-512 copies
//! picks one at run time and enters it through `unsafe` code that relies on this answer. The
//! answer is read on first use and cached for the life of the process (the CPU does not change);
//! reading it afterwards is one atomic load, from any thread. On other architectures every feature
//! is absent and the portable code runs. This module depends on nothing else in the crate.

use std::sync::LazyLock;

/// The x86-64 features the crate's kernels use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    /// 256-bit float vectors (the offline miner's 8-lane sums).
    pub avx: bool,
    /// AVX2 together with FMA: the 256-bit kernels of the network and the index.
    pub avx2_fma: bool,
    /// AVX-512 Foundation: the 512-bit kernels.
    pub avx512f: bool,
}

static FEATURES: LazyLock<CpuFeatures> = LazyLock::new(detect);

/// This CPU's features (detected on the first call).
pub fn features() -> CpuFeatures {
    *FEATURES
}

#[cfg(target_arch = "x86_64")]
fn detect() -> CpuFeatures {
    use std::arch::is_x86_feature_detected as has;
    CpuFeatures { avx: has!("avx"), avx2_fma: has!("avx2") && has!("fma"), avx512f: has!("avx512f") }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> CpuFeatures {
    CpuFeatures { avx: false, avx2_fma: false, avx512f: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wider_features_imply_narrower_ones_and_the_answer_is_stable() {
        let found = features();
        assert_eq!(found, features());
        if found.avx2_fma {
            assert!(found.avx, "AVX2 without AVX: {found:?}");
        }
    }
}
