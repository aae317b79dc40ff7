//! Cross-checks of miners and losses against brute-force enumeration of every (a, p, n), and
//! finiteness of the loss gradient when embeddings coincide.

use candle_core::{Device, Result, Tensor, Var};

use super::*;
use crate::rng::SeededRng;

const ROWS: usize = 12;
const DIMS: usize = 4;
const MARGIN: f32 = 0.2;
const SEEDS: std::ops::Range<u64> = 0..6;

/// Label sizes 5, 3, 3 and 1 (label 3 can only ever be a negative), shuffled by `seed`.
fn labels(seed: u64) -> Vec<u32> {
    let mut labels = vec![0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3];
    SeededRng::new(seed ^ 0xA5A5).shuffle(&mut labels);
    labels
}

/// `rows` random unit vectors of `DIMS` dimensions.
fn unit_rows(seed: u64, rows: usize) -> Vec<f32> {
    let mut rng = SeededRng::new(seed);
    let mut values = Vec::with_capacity(rows * DIMS);
    for _ in 0..rows {
        let row: Vec<f32> = (0..DIMS).map(|_| (rng.below(2001) as f32 - 1000.0) / 1000.0).collect();
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-3);
        values.extend(row.iter().map(|x| x / norm));
    }
    values
}

fn as_var(values: Vec<f32>) -> Result<Var> {
    let rows = values.len() / DIMS;
    Var::from_tensor(&Tensor::from_vec(values, (rows, DIMS), &Device::Cpu)?)
}

fn all_valid_triplets(labels: &[u32]) -> Vec<Triplet> {
    let n = labels.len();
    let mut triplets = Vec::new();
    for anchor in 0..n {
        for positive in 0..n {
            for negative in 0..n {
                if anchor != positive && labels[anchor] == labels[positive] && labels[negative] != labels[anchor] {
                    triplets.push(Triplet { anchor, positive, negative });
                }
            }
        }
    }
    triplets
}

fn d(distances: &[f32], from: usize, to: usize) -> f64 {
    f64::from(distances[from * ROWS + to])
}

/// Per anchor, the valid triplet with the largest `d_ap − d_an`, lowest (p, n) on ties.
fn brute_batch_hard(distances: &[f32], labels: &[u32]) -> Vec<Triplet> {
    let mut best: Vec<Option<(Triplet, f64)>> = vec![None; ROWS];
    for triplet in all_valid_triplets(labels) {
        let gap = d(distances, triplet.anchor, triplet.positive) - d(distances, triplet.anchor, triplet.negative);
        let slot = &mut best[triplet.anchor];
        if slot.is_none_or(|(_, best_gap)| gap > best_gap) {
            *slot = Some((triplet, gap));
        }
    }
    best.into_iter().flatten().map(|(triplet, _)| triplet).collect()
}

/// Per (a, p), the nearest negative with `d_ap < d_an < d_ap + margin`, lowest n on ties.
fn brute_semi_hard(distances: &[f32], labels: &[u32], margin: f32) -> Vec<Triplet> {
    let mut chosen: Vec<(Triplet, f64)> = Vec::new();
    for triplet in all_valid_triplets(labels) {
        let (d_ap, d_an) =
            (d(distances, triplet.anchor, triplet.positive), d(distances, triplet.anchor, triplet.negative));
        if !(d_ap < d_an && d_an < d_ap + f64::from(margin)) {
            continue;
        }
        match chosen.last_mut() {
            Some((last, best)) if (last.anchor, last.positive) == (triplet.anchor, triplet.positive) => {
                if d_an < *best {
                    (*last, *best) = (triplet, d_an);
                }
            }
            _ => chosen.push((triplet, d_an)),
        }
    }
    chosen.into_iter().map(|(triplet, _)| triplet).collect()
}

/// The loss of `triplets` computed one triplet at a time in `f64`.
fn brute_loss(distances: &[f32], triplets: &[Triplet], soft: bool, reduction: Reduction) -> f64 {
    let losses: Vec<f64> = triplets
        .iter()
        .map(|t| {
            let gap = d(distances, t.anchor, t.positive) - d(distances, t.anchor, t.negative);
            if soft { gap.exp().ln_1p() } else { (gap + f64::from(MARGIN)).max(0.0) }
        })
        .collect();
    let total: f64 = losses.iter().sum();
    let count = match reduction {
        Reduction::Sum => return total,
        Reduction::Mean => losses.len(),
        Reduction::MeanOverActive => losses.iter().filter(|&&loss| loss > 0.0).count(),
    };
    if count == 0 { 0.0 } else { total / count as f64 }
}

fn assert_loss_matches(distances: &Tensor, triplets: &[Triplet], context: &str) -> Result<()> {
    let values = distances_to_vec(distances)?;
    for soft in [false, true] {
        for reduction in [Reduction::Mean, Reduction::MeanOverActive, Reduction::Sum] {
            let got = f64::from(loss_value(&triplet_loss(distances, triplets, MARGIN, soft, reduction)?)?);
            let expected = brute_loss(&values, triplets, soft, reduction);
            let tolerance = 1e-5 * expected.abs().max(1.0);
            assert!((got - expected).abs() < tolerance, "{context} soft={soft} {reduction:?}: {got} vs {expected}");
        }
    }
    Ok(())
}

#[test]
fn miners_and_losses_match_brute_force_on_random_embeddings() -> Result<()> {
    let mut semi_hard_found = 0;
    for seed in SEEDS {
        let labels = labels(seed);
        let var = as_var(unit_rows(seed, ROWS))?;
        let distances = pairwise_distances(var.as_tensor())?;
        let values = distances_to_vec(&distances)?;
        let mining_error = |error: MiningError| candle_core::Error::Msg(error.to_string());

        let hard = batch_hard(&values, &labels).map_err(mining_error)?;
        assert_eq!(hard, brute_batch_hard(&values, &labels), "batch-hard, seed {seed}");
        assert_eq!(hard.len(), ROWS - 1, "every item but the single-item label anchors once");
        assert_loss_matches(&distances, &hard, "batch-hard")?;

        let all = batch_all(&values, &labels).map_err(mining_error)?;
        assert_eq!(all, all_valid_triplets(&labels), "batch-all, seed {seed}");
        assert_loss_matches(&distances, &all, "batch-all")?;

        let semi = semi_hard(&values, &labels, MARGIN).map_err(mining_error)?;
        assert_eq!(semi, brute_semi_hard(&values, &labels, MARGIN), "semi-hard, seed {seed}");
        for t in &semi {
            let (d_ap, d_an) = (d(&values, t.anchor, t.positive), d(&values, t.anchor, t.negative));
            assert!(d_ap < d_an && d_an < d_ap + f64::from(MARGIN), "semi-hard condition, seed {seed}: {t:?}");
        }
        semi_hard_found += semi.len();
        assert_loss_matches(&distances, &semi, "semi-hard")?;

        let random = random_triplets(&values, &labels, seed).map_err(mining_error)?;
        let valid = all_valid_triplets(&labels);
        assert!(random.iter().all(|t| valid.contains(t)), "random triplets are valid, seed {seed}");
        let anchors: Vec<usize> = random.iter().map(|t| t.anchor).collect();
        assert_eq!(anchors, hard.iter().map(|t| t.anchor).collect::<Vec<_>>(), "one per eligible anchor");
        assert_eq!(random, random_triplets(&values, &labels, seed).map_err(mining_error)?);
        assert_ne!(random, random_triplets(&values, &labels, seed + 100).map_err(mining_error)?);
        assert_loss_matches(&distances, &random, "random")?;
    }
    assert!(semi_hard_found > 0, "the semi-hard window selected nothing on any seed");
    Ok(())
}

/// Mines with `mining`, takes the loss and returns (loss, gradient w.r.t. the embeddings).
fn loss_and_gradient(var: &Var, labels: &[u32], mining: Mining, soft: bool) -> Result<(f32, Vec<f32>)> {
    let distances = pairwise_distances(var.as_tensor())?;
    let values = distances_to_vec(&distances)?;
    let triplets = mine(mining, &values, labels, MARGIN, 7).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let loss = triplet_loss(&distances, &triplets, MARGIN, soft, mining.reduction())?;
    let grads = loss.backward()?;
    let grad = grads.get(var.as_tensor()).ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
    Ok((loss_value(&loss)?, grad.flatten_all()?.to_vec1::<f32>()?))
}

fn assert_finite_everywhere(var: &Var, labels: &[u32], context: &str) -> Result<()> {
    for mining in Mining::ALL {
        for soft in [false, true] {
            let (loss, grad) = loss_and_gradient(var, labels, mining, soft)?;
            assert!(loss.is_finite(), "{context} {mining} soft={soft}: loss {loss}");
            assert!(grad.iter().all(|g| g.is_finite()), "{context} {mining} soft={soft}: {grad:?}");
        }
    }
    Ok(())
}

#[test]
fn gradients_are_finite_when_all_embeddings_are_equal() -> Result<()> {
    let row = unit_rows(3, 1);
    let var = as_var(row.repeat(ROWS))?;
    assert_finite_everywhere(&var, &labels(0), "all rows equal")?;
    // Every distance sits on the floor, so batch-hard's hinge is exactly the margin.
    let (loss, _) = loss_and_gradient(&var, &labels(0), Mining::BatchHard, false)?;
    assert!((loss - MARGIN).abs() < 1e-6, "{loss}");
    Ok(())
}

#[test]
fn gradients_are_finite_when_two_rows_are_identical() -> Result<()> {
    let labels = labels(1);
    let positive_of_0 = (1..ROWS).find(|&i| labels[i] == labels[0]).unwrap_or(1);
    let negative_of_0 = (1..ROWS).find(|&i| labels[i] != labels[0]).unwrap_or(2);
    for twin in [positive_of_0, negative_of_0] {
        let mut values = unit_rows(5, ROWS);
        let first_row = values[..DIMS].to_vec();
        values[twin * DIMS..(twin + 1) * DIMS].copy_from_slice(&first_row);
        assert_finite_everywhere(&as_var(values)?, &labels, &format!("row {twin} equals row 0"))?;
    }
    Ok(())
}

#[test]
fn gradient_reaches_the_embeddings() -> Result<()> {
    let var = as_var(unit_rows(2, ROWS))?;
    let (loss, grad) = loss_and_gradient(&var, &labels(2), Mining::BatchHard, false)?;
    assert!(loss > 0.0 && grad.iter().any(|&g| g != 0.0), "loss {loss}");
    Ok(())
}
