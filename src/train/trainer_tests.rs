//! Head training on synthetic features with a hidden structure: class centroids live in a small
//! subspace, and much larger per-item noise fills the other dimensions, so raw cosine retrieval is
//! poor until the head learns to project the noise away.

use std::collections::HashMap;
use std::ops::ControlFlow;

use candle_core::Device;

use super::*;

const IN_DIM: usize = 48;
/// Dimensions that carry the class centroid; the rest are noise.
const SIGNAL_DIMS: usize = 6;
const NOISE_STD: f32 = 0.9;
const CENTROID_STD: f32 = 1.0;
const WITHIN_CLASS_STD: f32 = 0.15;
const ITEMS_PER_CLASS: usize = 8;

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut SeededRng) -> f32 {
    let uniform = |rng: &mut SeededRng| ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (u, v) = (uniform(rng), uniform(rng));
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}

/// `classes` classes of `ITEMS_PER_CLASS` items, labelled from `first_label`.
fn dataset(classes: usize, first_label: u32, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = SeededRng::new(seed);
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for class in 0..classes {
        let centroid: Vec<f32> = (0..SIGNAL_DIMS).map(|_| normal(&mut rng) * CENTROID_STD).collect();
        for _ in 0..ITEMS_PER_CLASS {
            features.extend(centroid.iter().map(|c| c + normal(&mut rng) * WITHIN_CLASS_STD));
            features.extend((SIGNAL_DIMS..IN_DIM).map(|_| normal(&mut rng) * NOISE_STD));
            labels.push(first_label + class as u32);
        }
    }
    (features, labels)
}

fn params() -> TrainParams {
    TrainParams {
        epochs: 12,
        learning_rate: 2e-2,
        batch_classes: 4,
        batch_per_class: 4,
        input_dim: IN_DIM,
        embedding_dim: 8,
        seed: 3,
        ..TrainParams::default()
    }
}

fn keep_going(_: &StepReport, _: &EmbeddingHead) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn mean(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len() as f32
}

#[test]
fn defaults_are_documented_values_and_empty_json_gives_them() {
    let defaults = TrainParams::default();
    assert_eq!(defaults.mining, Mining::BatchHard);
    assert_eq!((defaults.input_dim, defaults.embedding_dim), (1280, 128));
    assert_eq!((defaults.batch_classes, defaults.batch_per_class, defaults.epochs), (8, 4, 10));
    let parsed: TrainParams = serde_json::from_str("{}").expect("every field has a default");
    assert_eq!(parsed, defaults);
}

#[test]
fn training_beats_raw_features_on_held_out_classes_and_the_loss_falls() -> Result<(), TrainError> {
    let (train_features, train_labels) = dataset(24, 0, 1);
    let (test_features, test_labels) = dataset(12, 100, 2);
    for params in [params(), TrainParams { mining: Mining::BatchAll, ..params() }] {
        let mut reports = Vec::new();
        let trained = train_head(&train_features, &train_labels, None, &params, &Device::Cpu, &mut |report, _| {
            reports.push(*report);
            ControlFlow::Continue(())
        })?;
        assert_eq!(trained.steps, reports.len());
        assert!(trained.losses.iter().all(|loss| loss.is_finite()));

        let per_epoch = trained.steps / params.epochs;
        let first = mean(&trained.losses[..per_epoch]);
        let last = mean(&trained.losses[trained.steps - per_epoch..]);
        assert!(last < 0.5 * first, "{}: loss {first} → {last}", params.mining);
        let gap = |r: &StepReport| r.mean_negative_distance - r.mean_positive_distance;
        assert!(gap(&reports[reports.len() - 1]) > gap(&reports[0]), "{}", params.mining);

        let raw = recall_at_1(&test_features, IN_DIM, &test_labels);
        let embedded = trained.head.embed_rows(&test_features, &Device::Cpu)?;
        let learned = recall_at_1(&embedded, params.embedding_dim, &test_labels);
        println!(
            "{}: held-out recall@1 {raw:.3} raw → {learned:.3} trained; loss {first:.3} → {last:.3}",
            params.mining
        );
        assert!(raw < 0.6, "the raw features should retrieve poorly: {raw}");
        assert!(learned > raw + 0.25 && learned > 0.85, "{}: recall@1 {raw} → {learned}", params.mining);
    }
    Ok(())
}

#[test]
fn offline_injection_trains_and_needs_the_mined_pairs() -> Result<(), TrainError> {
    let (features, labels) = dataset(8, 0, 4);
    let injected: HashMap<usize, usize> =
        (0..labels.len()).map(|item| (item, item - item % ITEMS_PER_CLASS + (item + 1) % ITEMS_PER_CLASS)).collect();
    let params = TrainParams { offline_injection: true, mining: Mining::Random, epochs: 3, ..params() };
    assert_eq!(params.effective_mining(), Mining::BatchHard);
    let trained = train_head(&features, &labels, Some(&injected), &params, &Device::Cpu, &mut keep_going)?;
    assert!(trained.steps > 0 && trained.final_loss.is_finite());
    let missing = train_head(&features, &labels, None, &params, &Device::Cpu, &mut keep_going);
    assert!(matches!(missing, Err(TrainError::InvalidInput(_))), "{missing:?}");
    Ok(())
}

#[test]
fn same_inputs_and_seed_give_bit_identical_losses() -> Result<(), TrainError> {
    let (features, labels) = dataset(8, 0, 5);
    let params = TrainParams { epochs: 4, mining: Mining::Random, ..params() };
    let run = || train_head(&features, &labels, None, &params, &Device::Cpu, &mut keep_going);
    let (first, again) = (run()?, run()?);
    let bits = |losses: &[f32]| losses.iter().map(|loss| loss.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&first.losses), bits(&again.losses));
    let other =
        train_head(&features, &labels, None, &TrainParams { seed: 4, ..params }, &Device::Cpu, &mut keep_going)?;
    assert_ne!(bits(&first.losses), bits(&other.losses));
    Ok(())
}

#[test]
fn the_observer_cancels_training() {
    let (features, labels) = dataset(8, 0, 6);
    let mut seen = 0;
    let result = train_head(&features, &labels, None, &params(), &Device::Cpu, &mut |report, _| {
        seen += 1;
        if report.step == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    assert!(matches!(result, Err(TrainError::Canceled { steps: 3 })), "{result:?}");
    assert_eq!(seen, 3);
}

/// A caller that stops by its own step budget (bench/src/bin/train_bench.rs) passes
/// `usize::MAX` epochs, on either schedule.
#[test]
fn unbounded_epochs_run_until_the_observer_stops_them() {
    let (features, labels) = dataset(8, 0, 6);
    for lr_schedule in [LrSchedule::Constant, LrSchedule::Cosine] {
        let params = TrainParams { epochs: usize::MAX, lr_schedule, ..params() };
        let result = train_head(&features, &labels, None, &params, &Device::Cpu, &mut |report, _| {
            if report.step == 4 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        assert!(matches!(result, Err(TrainError::Canceled { steps: 5 })), "{lr_schedule:?}: {result:?}");
    }
}

#[test]
fn a_plan_without_a_budget_takes_every_step() {
    let mut plan = StepPlan::new(100, None);
    assert!((0..100).all(|step| plan.admits(step, 1e9)));
    assert!(!plan.admits(100, 0.0));
    assert_eq!((plan.total(), plan.planned()), (100, 100));
}

#[test]
fn a_plan_shortens_to_the_steps_its_budget_holds_at_the_timed_pace() {
    // 1 s a step against a 50 s budget: the first timing (after PLAN_PROBE_STEPS steps) plans 50.
    let mut plan = StepPlan::new(1000, Some(50.0));
    for step in 0..PLAN_PROBE_STEPS {
        assert!(plan.admits(step, step as f64));
        assert_eq!(plan.total(), 1000, "no timing before step {PLAN_PROBE_STEPS}");
    }
    assert!(plan.admits(PLAN_PROBE_STEPS, PLAN_PROBE_STEPS as f64));
    assert_eq!(plan.total(), 50);
    // A faster pace later never lengthens the plan again.
    assert!(plan.admits(2 * PLAN_PROBE_STEPS, 2.0 * PLAN_PROBE_STEPS as f64 * 0.5));
    assert_eq!(plan.total(), 50);
    assert!(plan.admits(49, 48.0) && !plan.admits(50, 49.0));
    assert_eq!(plan.planned(), 1000);
}

#[test]
fn a_plan_the_budget_holds_is_never_cut_and_a_slowing_run_stops_at_the_budget() {
    let mut plan = StepPlan::new(100, Some(60.0));
    // 0.5 s a step: 100 steps take 50 s, inside the budget.
    assert!((0..100).all(|step| plan.admits(step, step as f64 * 0.5)));
    assert_eq!(plan.total(), 100);
    // A run whose steps slow down after its last timing stops when the budget is spent.
    let mut plan = StepPlan::new(100, Some(60.0));
    assert!(plan.admits(PLAN_PROBE_STEPS, 10.0));
    assert!(!plan.admits(PLAN_PROBE_STEPS + 1, 60.0));
    assert_eq!(plan.total(), PLAN_PROBE_STEPS + 1);
    // The first step always runs.
    assert!(StepPlan::new(10, Some(0.0)).admits(0, 1.0));
}

/// The trainer under a budget: steps made slow by the observer (20 ms each) against a budget of
/// 1.5 s stop well short of the 800 steps asked for; every report names the plan of the moment,
/// and the schedule ends at the plan's last step.
#[test]
fn a_time_budget_cuts_training_and_the_schedule_follows_the_cut() -> Result<(), TrainError> {
    let (features, labels) = dataset(8, 0, 9);
    let params = TrainParams { epochs: 200, max_seconds: Some(1.5), lr_schedule: LrSchedule::Cosine, ..params() };
    let mut reports = Vec::new();
    let trained = train_head(&features, &labels, None, &params, &Device::Cpu, &mut |report, _| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        reports.push(*report);
        ControlFlow::Continue(())
    })?;
    let planned = reports[0].steps;
    assert_eq!(planned, 200 * (labels.len() / 16), "before the first timing the plan is the epochs'");
    assert!(trained.steps < planned / 2, "{} of {planned} steps ran", trained.steps);
    assert!(trained.steps > PLAN_PROBE_STEPS, "the budget holds more than the first timing's steps");
    assert_eq!(reports.len(), trained.steps);
    let last = reports[reports.len() - 1].steps;
    assert!(last < planned && last >= trained.steps, "the plan was cut to {last}");
    Ok(())
}

#[test]
fn the_observer_sees_the_head_as_each_step_left_it() -> Result<(), TrainError> {
    let (features, labels) = dataset(8, 0, 8);
    let params = TrainParams { epochs: 2, ..params() };
    let mut seen = Vec::new();
    let trained = train_head(&features, &labels, None, &params, &Device::Cpu, &mut |_, head| {
        seen.push(head.embed_rows(&features[..IN_DIM], &Device::Cpu).map_err(TrainError::Tensor));
        ControlFlow::Continue(())
    })?;
    let seen = seen.into_iter().collect::<Result<Vec<_>, _>>()?;
    assert_eq!(seen.len(), trained.steps);
    assert_ne!(seen[0], seen[seen.len() - 1], "the head changes between steps");
    assert_eq!(seen[seen.len() - 1], trained.head.embed_rows(&features[..IN_DIM], &Device::Cpu)?);
    Ok(())
}

#[test]
fn identical_or_zero_features_trip_the_collapse_guard_without_nan() {
    let labels: Vec<u32> = (0..16u32).flat_map(|class| [class; 4]).collect();
    let params = TrainParams { epochs: 20, input_dim: 8, ..params() };
    for value in [0.5f32, 0.0] {
        let features = vec![value; labels.len() * params.input_dim];
        let mut reports = Vec::new();
        let result = train_head(&features, &labels, None, &params, &Device::Cpu, &mut |report, _| {
            reports.push(*report);
            ControlFlow::Continue(())
        });
        let Err(TrainError::Collapsed { step, mean_positive_distance, mean_negative_distance, loss, .. }) = result
        else {
            panic!("features all {value}: expected a collapse, got {result:?}");
        };
        assert_eq!(step + 1, COLLAPSE_WINDOW, "features all {value}");
        assert!([mean_positive_distance, mean_negative_distance, loss].iter().all(|x| x.is_finite()));
        assert!((loss - params.margin).abs() < COLLAPSE_LOSS_TOLERANCE);
        assert!(reports.iter().all(|r| r.loss.is_finite() && r.mean_positive_distance.is_finite()));
    }
}

#[test]
fn bad_inputs_are_errors() {
    let (features, labels) = dataset(4, 0, 7);
    let short = train_head(&features[1..], &labels, None, &params(), &Device::Cpu, &mut keep_going);
    assert!(matches!(short, Err(TrainError::InvalidInput(_))), "{short:?}");
    let one_class = TrainParams { batch_classes: 1, ..params() };
    assert!(matches!(
        train_head(&features, &labels, None, &one_class, &Device::Cpu, &mut keep_going),
        Err(TrainError::InvalidInput(_))
    ));
    let too_many = TrainParams { batch_classes: 5, ..params() };
    assert!(matches!(
        train_head(&features, &labels, None, &too_many, &Device::Cpu, &mut keep_going),
        Err(TrainError::Sampler(_))
    ));
}

#[test]
fn recall_at_1_counts_nearest_neighbours_with_the_same_label() {
    // Two tight pairs, and a third item of label 0 nearest to label 1.
    let vectors = [1.0, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9, -0.5, 1.0];
    let labels = [0, 0, 1, 1, 0];
    assert!((recall_at_1(&vectors, 2, &labels) - 0.8).abs() < 1e-6);
    assert_eq!(recall_at_1(&vectors[..4], 2, &[0, 1]), 0.0, "no item has a same-label neighbour");
}

#[test]
fn the_cosine_schedule_falls_from_the_rate_to_zero() {
    assert_eq!(LrSchedule::Constant.factor(7, 10), 1.0);
    assert_eq!(LrSchedule::Cosine.factor(0, 10), 1.0);
    assert!((LrSchedule::Cosine.factor(5, 10) - 0.5).abs() < 1e-12);
    assert!(LrSchedule::Cosine.factor(10, 10).abs() < 1e-12);
    let factors: Vec<f64> = (0..=10).map(|t| LrSchedule::Cosine.factor(t, 10)).collect();
    assert!(factors.windows(2).all(|w| w[1] < w[0]), "{factors:?}");
}

fn square(values: &[f32]) -> Tensor {
    let n = (values.len() as f64).sqrt() as usize;
    Tensor::from_vec(values.to_vec(), (n, n), &Device::Cpu).expect("square")
}

#[test]
fn the_geometry_term_is_the_mean_huber_gap_to_the_reference_distances() -> candle_core::Result<()> {
    let reference = square(&[0.0, 0.4, 0.9, 0.4, 0.0, 1.2, 0.9, 1.2, 0.0]);
    let value = |distances: &Tensor| geometry_loss(distances, &reference)?.to_scalar::<f32>();
    assert_eq!(value(&reference)?, 0.0);
    // Gaps 0.2 (quadratic) and 1.5 (linear past δ = 1), each twice in the matrix.
    let moved = square(&[0.0, 0.6, 0.9, 0.6, 0.0, 2.7, 0.9, 2.7, 0.0]);
    let expected = (2.0 * 0.5 * 0.2f32 * 0.2 + 2.0 * (1.5 - 0.5)) / 9.0;
    assert!((value(&moved)? - expected).abs() < 1e-6, "{} against {expected}", value(&moved)?);
    Ok(())
}

/// Mean same-label over mean other-label distance of `rows` (`dim` wide, unit length).
fn spread(rows: &[f32], dim: usize, labels: &[u32]) -> f32 {
    let (mut same, mut other) = ((0.0f32, 0usize), (0.0f32, 0usize));
    for (i, a) in rows.chunks_exact(dim).enumerate() {
        for (j, b) in rows.chunks_exact(dim).enumerate().skip(i + 1) {
            let d = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
            let slot = if labels[i] == labels[j] { &mut same } else { &mut other };
            *slot = (slot.0 + d, slot.1 + 1);
        }
    }
    (same.0 / same.1 as f32) / (other.0 / other.1 as f32)
}

#[test]
fn the_geometry_term_keeps_labels_from_shrinking_to_points() -> Result<(), TrainError> {
    let (features, labels) = dataset(8, 0, 11);
    let embed = |weight: f32| -> Result<f32, TrainError> {
        let params = TrainParams { epochs: 30, geometry_weight: weight, ..params() };
        let trained = train_head(&features, &labels, None, &params, &Device::Cpu, &mut keep_going)?;
        Ok(spread(&trained.head.embed_rows(&features, &Device::Cpu)?, params.embedding_dim, &labels))
    };
    let (alone, kept) = (embed(0.0)?, embed(5.0)?);
    assert!(kept > alone * 1.5, "same/other distance ratio: {kept} with the term, {alone} without");
    Ok(())
}
