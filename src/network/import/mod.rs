//! Weight import: reads PyTorch's legacy (pre-zip) `.pth` serialisation and
//! writes the state dict as safetensors, keeping the original key names.
//!
//! The legacy file is five pickles in a row (magic number, protocol version,
//! system info, the state dict, the list of storage keys) followed, for each
//! key in that list's order, by an int64 element count and the raw
//! little-endian data. Import runs once at set-up time, on the calling thread;
//! nothing here is shared between threads.

mod pickle;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::{Device, Tensor};

use pickle::{StorageKind, TensorRef, Value};

/// The number torch writes first, to recognise its legacy format.
const MAGIC_NUMBER: &str = "119547037146038801333356";
/// The only legacy protocol version torch has written.
const PROTOCOL_VERSION: i64 = 1001;

/// Reads a legacy-format `.pth` state dict into named CPU tensors, in the
/// order the file lists them. Non-contiguous tensors come out contiguous.
pub fn read_legacy_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_legacy(&data).with_context(|| format!("reading legacy PyTorch file {}", path.display()))
}

/// Converts a legacy `.pth` state dict to a safetensors file at `out`
/// (written beside it, then renamed into place). Returns the tensor count.
pub fn import_weights(pth: &Path, out: &Path) -> Result<usize> {
    let tensors = read_legacy_pth(pth)?;
    let count = tensors.len();
    let map: HashMap<String, Tensor> = tensors.into_iter().collect();
    ensure!(map.len() == count, "{} holds duplicate tensor names", pth.display());
    write_safetensors(&map, out)?;
    Ok(count)
}

/// Writes `tensors` to `out` crash-safely: a temporary file in the same
/// folder, flushed to disk, then renamed over `out`.
pub(crate) fn write_safetensors(tensors: &HashMap<String, Tensor>, out: &Path) -> Result<()> {
    let name = out.file_name().ok_or_else(|| anyhow!("{} has no file name", out.display()))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = out.with_file_name(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let written = candle_core::safetensors::save(tensors, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| Ok(std::fs::File::open(&tmp)?.sync_all()?))
        .and_then(|()| Ok(std::fs::rename(&tmp, out)?));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.with_context(|| format!("writing {}", out.display()))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename durable; not every platform lets a folder be synced.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn parse_legacy(data: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut pos = 0;
    let magic = pickle::load(data, &mut pos).context("magic number")?;
    if magic != Value::Str(MAGIC_NUMBER.into()) {
        bail!("not a legacy PyTorch file (no magic number); the zip format is read by candle itself");
    }
    let version = pickle::load(data, &mut pos).context("protocol version")?;
    if version != Value::Int(PROTOCOL_VERSION) {
        bail!("unsupported legacy protocol version {version:?}");
    }
    let _sys_info = pickle::load(data, &mut pos).context("system info")?;
    let state = pickle::load(data, &mut pos).context("state dict")?;
    let keys = pickle::load(data, &mut pos).context("storage keys")?;

    let Value::Dict(entries) = state else { bail!("the saved object is not a state dict") };
    let Value::List(keys) = keys else { bail!("the storage key list is not a list") };
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let Value::Str(name) = name else { bail!("state dict key is not a string: {name:?}") };
        let Value::Tensor(t) = value else { bail!("state dict entry {name} is not a tensor") };
        tensors.push((name, t));
    }

    let mut storages: HashMap<String, &[u8]> = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else { bail!("storage key is not a string") };
        let count = data.get(pos..pos + 8).ok_or_else(|| anyhow!("storage {key}: file truncated"))?;
        let count = i64::from_le_bytes(count.try_into()?);
        pos += 8;
        let kind = tensors
            .iter()
            .find(|(_, t)| t.storage_key == key)
            .map(|(_, t)| t.kind)
            .ok_or_else(|| anyhow!("storage {key} is used by no tensor"))?;
        let bytes = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(kind.size()))
            .ok_or_else(|| anyhow!("storage {key}: bad element count {count}"))?;
        let raw = data.get(pos..pos.saturating_add(bytes)).ok_or_else(|| anyhow!("storage {key}: file truncated"))?;
        pos += bytes;
        storages.insert(key, raw);
    }
    if pos != data.len() {
        bail!("{} unexpected bytes after the storages", data.len() - pos);
    }

    tensors
        .into_iter()
        .map(|(name, t)| {
            let raw =
                storages.get(&t.storage_key).ok_or_else(|| anyhow!("{name}: storage {} missing", t.storage_key))?;
            let tensor = materialise(&t, raw).with_context(|| format!("tensor {name}"))?;
            Ok((name, tensor))
        })
        .collect()
}

/// Copies the strided view `t` out of its storage bytes into a contiguous tensor.
fn materialise(t: &TensorRef, raw: &[u8]) -> Result<Tensor> {
    let elem = t.kind.size();
    let numel = raw.len() / elem;
    ensure!(numel == t.storage_numel, "storage holds {numel} elements, the pickle says {}", t.storage_numel);
    let count: usize = t.size.iter().product();
    // Only zero-stride (broadcast) views can hold more elements than their storage.
    ensure!(count <= numel, "views with more elements than their storage are not supported");
    if count > 0 {
        let last = t
            .size
            .iter()
            .zip(&t.stride)
            .try_fold(t.offset, |acc, (&n, &s)| (n - 1).checked_mul(s).and_then(|span| acc.checked_add(span)));
        ensure!(last.is_some_and(|l| l < numel), "view reaches beyond its storage");
    }
    let indices = strided_indices(t.offset, &t.size, &t.stride);
    let shape = t.size.as_slice();
    let device = &Device::Cpu;
    let tensor = match t.kind {
        StorageKind::F32 => Tensor::from_vec(gather(raw, &indices, f32::from_le_bytes), shape, device)?,
        StorageKind::F64 => Tensor::from_vec(gather(raw, &indices, f64::from_le_bytes), shape, device)?,
        StorageKind::I64 => Tensor::from_vec(gather(raw, &indices, i64::from_le_bytes), shape, device)?,
        StorageKind::U8 => Tensor::from_vec(gather(raw, &indices, u8::from_le_bytes), shape, device)?,
    };
    Ok(tensor)
}

/// Element indices of a strided view, in row-major order of the view.
fn strided_indices(offset: usize, size: &[usize], stride: &[usize]) -> Vec<usize> {
    let mut out = vec![offset];
    for (&n, &s) in size.iter().zip(stride) {
        out = out.iter().flat_map(|&base| (0..n).map(move |i| base + i * s)).collect();
    }
    out
}

/// Reads the elements at `indices` (bounds checked by the caller).
fn gather<T, const N: usize>(raw: &[u8], indices: &[usize], decode: fn([u8; N]) -> T) -> Vec<T> {
    indices
        .iter()
        .map(|&i| {
            let mut bytes = [0u8; N];
            bytes.copy_from_slice(&raw[i * N..(i + 1) * N]);
            decode(bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_view_is_transposed() {
        // A 2×3 view with strides (1, 2) over [0..6): the transpose of a 3×2.
        assert_eq!(strided_indices(0, &[2, 3], &[1, 2]), vec![0, 2, 4, 1, 3, 5]);
        assert_eq!(strided_indices(5, &[], &[]), vec![5]);
    }

    #[test]
    fn rejects_non_pth() {
        assert!(parse_legacy(b"hello world").is_err());
        assert!(parse_legacy(b"").is_err());
        // A valid magic pickle followed by garbage.
        let mut bytes = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec();
        bytes.extend_from_slice(b"\x80\x02M\xe9\x03.\xff");
        let err = parse_legacy(&bytes).expect_err("garbage must fail");
        assert!(format!("{err:#}").contains("opcode"), "{err:#}");
    }
}
