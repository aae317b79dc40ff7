//! `lookalike-data`: prepares real data sets as files the service and its benchmarks use.
//!
//! Owns the command line only; the work is in `fashion_mnist`. A one-shot,
//! single-threaded tool: run one at a time per output folder.
//!
//! ```text
//! lookalike-data fashion-mnist --out DIR [--catalogue-per-label N] [--queries-per-label M]
//!                              [--source DIR]
//! ```
//! writes `DIR/catalogue.zip` from the train split and `DIR/queries/` from the test split.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fashion_mnist::{self, DEFAULT_DIR, LABELS, Sample, Split};

#[derive(Parser)]
#[command(name = "lookalike-data", about = "Prepares real data sets for lookalike's tests, demos and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a catalogue zip (train split) and a query folder (test split) of Fashion-MNIST.
    FashionMnist(FashionMnistArgs),
}

#[derive(Args)]
struct FashionMnistArgs {
    /// Output folder; receives `catalogue.zip` and `queries/`.
    #[arg(long)]
    out: PathBuf,
    /// Catalogue images per label, the first in file order; 0 means the whole train split.
    #[arg(long, default_value_t = 0)]
    catalogue_per_label: usize,
    /// Query images per label, the first in file order; 0 means the whole test split.
    #[arg(long, default_value_t = 0)]
    queries_per_label: usize,
    /// Folder holding the gzip IDX files.
    #[arg(long, default_value = DEFAULT_DIR)]
    source: PathBuf,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::FashionMnist(args) => fashion_mnist_files(&args),
    }
}

fn fashion_mnist_files(args: &FashionMnistArgs) -> anyhow::Result<()> {
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;

    let train = fashion_mnist::read_split(&args.source, Split::Train)?;
    let catalogue = fashion_mnist::balanced_subset(&train, args.catalogue_per_label);
    let zip_path = args.out.join("catalogue.zip");
    fashion_mnist::write_catalogue_zip(&catalogue, &zip_path)?;
    println!("wrote {}: {} train images ({})", zip_path.display(), catalogue.len(), per_label_summary(&catalogue));

    let test = fashion_mnist::read_split(&args.source, Split::Test)?;
    let queries = fashion_mnist::balanced_subset(&test, args.queries_per_label);
    let query_dir = args.out.join("queries");
    replace_query_dir(&queries, &query_dir)?;
    println!(
        "wrote {}/: {} test images as <label>/<index>.png ({})",
        query_dir.display(),
        queries.len(),
        per_label_summary(&queries)
    );
    Ok(())
}

/// Writes the query folder aside and swaps it in, so a rerun never mixes old and new files.
fn replace_query_dir(queries: &[&Sample], query_dir: &Path) -> anyhow::Result<()> {
    let fresh = query_dir.with_file_name(format!(".queries.tmp-{}", std::process::id()));
    if fresh.exists() {
        fs::remove_dir_all(&fresh)?;
    }
    fashion_mnist::write_query_dir(queries, &fresh)?;
    if query_dir.exists() {
        fs::remove_dir_all(query_dir).with_context(|| format!("removing the old {}", query_dir.display()))?;
    }
    fs::rename(&fresh, query_dir).with_context(|| format!("renaming into {}", query_dir.display()))
}

fn per_label_summary(samples: &[&Sample]) -> String {
    let mut counts = [0usize; LABELS.len()];
    for sample in samples {
        if let Some(count) = counts.get_mut(usize::from(sample.label)) {
            *count += 1;
        }
    }
    LABELS.iter().zip(counts).map(|(name, count)| format!("{name} {count}")).collect::<Vec<_>>().join(", ")
}
