//! The experiment's two figures, drawn from its saved `results.json`.
//!
//! Reading the figures' data back from the results file, rather than from the run in memory, lets
//! `lookalike-experiment --replot DIR` redraw them (after a change of style, say) without the
//! half hour of training, and guarantees the figures show exactly the numbers the tables quote.

use std::fs;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use lookalike::train::plot::{self, Series};
use lookalike::train::{DistanceHistogram, Thresholds};

/// File name of the offline distance histogram figure.
pub const HISTOGRAM_PNG: &str = "distance-histogram.png";
/// File name of the MAP@R against steps figure.
pub const MAP_VS_STEPS_PNG: &str = "map-vs-steps.png";

/// The parts of `results.json` the figures need.
#[derive(Deserialize)]
struct SavedResults {
    config: SavedConfig,
    baseline: SavedReport,
    offline: SavedOffline,
    runs: Vec<SavedRun>,
}

#[derive(Deserialize)]
struct SavedConfig {
    budget: usize,
    train: SavedTrain,
}

#[derive(Deserialize)]
struct SavedTrain {
    seed: u64,
}

#[derive(Deserialize)]
struct SavedReport {
    metrics: SavedMetrics,
}

#[derive(Deserialize)]
struct SavedMetrics {
    map_at_r: f64,
}

#[derive(Deserialize)]
struct SavedOffline {
    stats: SavedStats,
    histogram: DistanceHistogram,
    thresholds: Thresholds,
}

#[derive(Deserialize)]
struct SavedStats {
    anchors: usize,
}

#[derive(Deserialize)]
struct SavedRun {
    mode: SavedMode,
    seed: u64,
    checkpoints: Vec<SavedCheckpoint>,
}

#[derive(Deserialize)]
struct SavedMode {
    name: String,
}

#[derive(Deserialize)]
struct SavedCheckpoint {
    step: usize,
    metrics: SavedMetrics,
}

/// Draws both figures from `<dir>/results.json` into `dir`.
pub fn write_figures(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("results.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let saved: SavedResults = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;

    let title =
        format!("Pretrained distances, {} training items (t_pos, t_neg, valley marked)", saved.offline.stats.anchors);
    let histogram = plot::distance_histogram_png(&saved.offline.histogram, &saved.offline.thresholds, &title)?;
    write(dir, HISTOGRAM_PNG, &histogram)?;

    let seed = saved.config.train.seed;
    let mut series: Vec<Series> = saved
        .runs
        .iter()
        .filter(|run| run.seed == seed)
        .map(|run| Series {
            name: run.mode.name.clone(),
            points: run.checkpoints.iter().map(|c| (c.step as f64, c.metrics.map_at_r)).collect(),
        })
        .collect();
    let baseline = saved.baseline.metrics.map_at_r;
    series.push(Series {
        name: "pretrained 1280-d (no head)".to_owned(),
        points: vec![(0.0, baseline), (saved.config.budget as f64, baseline)],
    });
    let chart = plot::line_chart_png(
        &format!("MAP@R of the test queries against optimiser steps (seed {seed})"),
        "optimiser steps",
        "MAP@R",
        &series,
    )?;
    write(dir, MAP_VS_STEPS_PNG, &chart)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_figures_are_drawn_from_a_results_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let checkpoints = |map: f64| {
            serde_json::json!([
                { "step": 0, "metrics": { "map_at_r": 0.3 } },
                { "step": 10, "metrics": { "map_at_r": map } },
            ])
        };
        let results = serde_json::json!({
            "config": { "budget": 10, "train": { "seed": 0 } },
            "baseline": { "metrics": { "map_at_r": 0.35 } },
            "offline": {
                "stats": { "anchors": 4 },
                "histogram": { "bin_edges": [0.5, 1.0, 1.5], "positive_counts": [3, 1], "negative_counts": [1, 5] },
                "thresholds": { "positive": 1.0, "negative": 1.0, "valley": 1.0 },
            },
            "runs": [
                { "mode": { "name": "batch-hard" }, "seed": 0, "checkpoints": checkpoints(0.5) },
                { "mode": { "name": "batch-hard" }, "seed": 1, "checkpoints": checkpoints(0.6) },
            ],
        });
        fs::write(dir.path().join("results.json"), results.to_string())?;
        write_figures(dir.path())?;
        for name in [HISTOGRAM_PNG, MAP_VS_STEPS_PNG] {
            let png = fs::read(dir.path().join(name))?;
            assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
        }
        assert!(write_figures(&dir.path().join("missing")).is_err());
        Ok(())
    }
}
