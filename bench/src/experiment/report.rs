//! Writes the experiment's results: the raw JSON, the figures' data, markdown tables and figures.
//!
//! Under `out_dir`: `results.json` (every figure measured), `map-vs-steps.csv` (one row per run
//! and checkpoint), `distance-histogram.json` (the offline histogram and thresholds) and
//! `tables.md` (the tables `docs/EXPERIMENTS.md` quotes); [`super::figures`] adds the PNGs. The markdown is generated so that the
//! document's numbers come from a run, not from hand copying; the reading of them is written by
//! a person.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::Context;

use super::ExperimentResults;
use super::runs::{Outcome, RunResult};
use lookalike::train::retrieval::Metrics;

/// CPU model (from `/proc/cpuinfo` where readable) and the cores available to this process.
pub fn machine_description() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{model}, {cores} cores available, no GPU (CPU build)")
}

/// Writes every output file into `results.config.out_dir`.
pub fn write_outputs(results: &ExperimentResults) -> anyhow::Result<()> {
    let out = &results.config.out_dir;
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write(out, "results.json", &serde_json::to_string_pretty(results)?)?;
    let histogram = serde_json::json!({
        "histogram": results.offline.histogram,
        "thresholds": results.offline.thresholds,
    });
    write(out, "distance-histogram.json", &serde_json::to_string_pretty(&histogram)?)?;
    write(out, "map-vs-steps.csv", &checkpoints_csv(results))?;
    write(out, "tables.md", &tables(results))?;
    Ok(())
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
}

fn checkpoints_csv(results: &ExperimentResults) -> String {
    let mut csv = String::from("mode,seed,step,map_at_r,recall_at_1,recall_at_5,recall_at_10,mean_loss\n");
    for run in &results.runs {
        for c in &run.checkpoints {
            let m = &c.metrics;
            let _ = writeln!(
                csv,
                "{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6}",
                run.mode.name, run.seed, c.step, m.map_at_r, m.recall_at_1, m.recall_at_5, m.recall_at_10, c.mean_loss
            );
        }
    }
    csv
}

fn metric_cells(m: &Metrics) -> String {
    format!("{:.4} | {:.4} | {:.4} | {:.4}", m.map_at_r, m.recall_at_1, m.recall_at_5, m.recall_at_10)
}

fn outcome_cell(run: &RunResult) -> String {
    match &run.outcome {
        Outcome::Completed => "completed".to_owned(),
        Outcome::Failed(reason) => format!("failed: {reason}"),
    }
}

/// The markdown tables: final quality per mode, MAP@R against steps, seeds, offline mining.
pub fn tables(results: &ExperimentResults) -> String {
    let seed = results.config.train.seed;
    let main_runs: Vec<&RunResult> = results.runs.iter().filter(|run| run.seed == seed).collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "### Quality after {} steps (seed {seed}; {} queries against {} catalogue items)\n",
        results.config.budget, results.baseline.queries, results.catalogue_items
    );
    md.push_str("| mode | MAP@R | R@1 | R@5 | R@10 | training wall time (s) | steps/s | outcome |\n");
    md.push_str("|---|---|---|---|---|---|---|---|\n");
    let _ = writeln!(
        md,
        "| pretrained features (1280-d, no head) | {} | – | – | – |",
        metric_cells(&results.baseline.metrics)
    );
    for run in &main_runs {
        let cells = run.final_metrics().map_or_else(|| "– | – | – | –".to_owned(), |m| metric_cells(&m));
        let _ = writeln!(
            md,
            "| {} | {cells} | {:.1} | {:.0} | {} |",
            run.mode.name,
            run.train_seconds,
            run.steps_per_second,
            outcome_cell(run)
        );
    }

    let steps: Vec<usize> = results.config.checkpoints.clone();
    let _ = writeln!(md, "\n### MAP@R against optimiser steps (seed {seed})\n");
    let header: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    let _ = writeln!(md, "| mode | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(steps.len()));
    for run in &main_runs {
        let cells: Vec<String> = steps
            .iter()
            .map(|&s| {
                run.checkpoints
                    .iter()
                    .find(|c| c.step == s)
                    .map_or("–".to_owned(), |c| format!("{:.4}", c.metrics.map_at_r))
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", run.mode.name, cells.join(" | "));
    }

    if !results.config.extra_seeds.is_empty() {
        let _ = writeln!(md, "\n### Spread over seeds (after {} steps)\n", results.config.budget);
        md.push_str("| mode | seed | MAP@R | R@1 | R@5 | R@10 |\n|---|---|---|---|---|---|\n");
        for name in super::REPEATED_MODES {
            let repeated: Vec<&RunResult> = results.runs.iter().filter(|run| run.mode.name == name).collect();
            for run in &repeated {
                let cells = run.final_metrics().map_or_else(|| "– | – | – | –".to_owned(), |m| metric_cells(&m));
                let _ = writeln!(md, "| {name} | {} | {cells} |", run.seed);
            }
            let maps: Vec<f64> = repeated.iter().filter_map(|run| run.final_metrics()).map(|m| m.map_at_r).collect();
            let r1: Vec<f64> = repeated.iter().filter_map(|run| run.final_metrics()).map(|m| m.recall_at_1).collect();
            let _ = writeln!(md, "| {name} | mean ± sd | {} | {} | | |", mean_sd(&maps), mean_sd(&r1));
        }
    }

    let offline = &results.offline;
    let _ = writeln!(md, "\n### Offline mining\n");
    md.push_str("| quantity | value |\n|---|---|\n");
    let rows = [
        ("items mined for thresholds and negatives (anchors and candidates)", offline.stats.anchors.to_string()),
        (
            "items searched for hard positives (labels with capped candidates)",
            format!("{} ({})", offline.stats.positive_anchors, offline.stats.capped_positive_labels),
        ),
        (
            "ordered positive / negative pairs",
            format!("{} / {}", offline.stats.positive_pairs, offline.stats.negative_pairs),
        ),
        (
            "mean positive / negative distance",
            format!("{:.4} / {:.4}", offline.stats.mean_positive, offline.stats.mean_negative),
        ),
        (
            "t_pos (q_p) / t_neg (q_n)",
            format!(
                "{:.4} ({}) / {:.4} ({})",
                offline.thresholds.positive,
                offline.params.positive_quantile,
                offline.thresholds.negative,
                offline.params.negative_quantile
            ),
        ),
        ("valley", offline.thresholds.valley.map_or("none (peaks overlap)".to_owned(), |v| format!("{v:.4}"))),
        (
            "hard positive / negative pairs kept",
            format!("{} / {}", offline.hard_positive_pairs, offline.hard_negative_pairs),
        ),
        ("anchors with an injected positive", offline.injected_anchors.to_string()),
        ("mining wall time (s)", format!("{:.1}", offline.seconds)),
    ];
    for (quantity, value) in rows {
        let _ = writeln!(md, "| {quantity} | {value} |");
    }
    md
}

/// `mean ± sample standard deviation` to four places (just the value for one number).
fn mean_sd(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".to_owned();
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() == 1 {
        return format!("{mean:.4}");
    }
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    format!("{mean:.4} ± {:.4}", variance.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_sd_uses_the_sample_deviation() {
        assert_eq!(mean_sd(&[]), "–");
        assert_eq!(mean_sd(&[0.5]), "0.5000");
        assert_eq!(mean_sd(&[1.0, 3.0]), "2.0000 ± 1.4142");
    }
}
