//! The feature cache: every item's backbone feature vector, kept on disk.
//!
//! Fine-tuning trains a head on the backbone's features of every item, and
//! building an index for any model starts from them too. Running the backbone
//! again over a whole catalogue is the slow part of both (minutes for 60,000
//! images on two cores), so the features are written once, by the ingest job
//! that computes them anyway, and read back by finetune and reindex jobs,
//! which embed only what is missing (items added one by one, or a cache lost).
//! It is also what lets an interrupted finetune job resume without running the
//! backbone again.
//!
//! A finetune job that trains the backbone's last blocks reads the activations entering the first
//! of them instead, from a cache of the same format keyed also by that block
//! ([`FeatureCache::at_block`]): the frozen part of the network runs once per item.
//!
//! One file per dataset, backbone and input size (a different backbone or
//! input size gives different features): `features/{dataset}/{backbone}-{size}px.f32`
//! (`…-block{b}-v1.f32` for block inputs; the `v1` names the H×W×C channels-last layout),
//! a sequence of records `seq: u64 LE` then `dim` × `f32 LE`. Appends only: a
//! record torn by a crash (a partial one at the end) is ignored when read and
//! cut off before the next append. Rows of deleted items stay until the
//! dataset is deleted; readers ask only for the seqs they need.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;

pub struct FeatureCache {
    path: PathBuf,
    dim: usize,
    /// Serialises appends (the ingest job and a finetune job never run at
    /// once, but a catch-up and a job may).
    append: Mutex<()>,
}

impl FeatureCache {
    pub fn new(data_dir: &Path, dataset: &str, backbone: &str, input_size: u32, dim: usize) -> Self {
        let path = Self::dataset_dir(data_dir, dataset).join(format!("{backbone}-{input_size}px.f32"));
        Self { path, dim, append: Mutex::new(()) }
    }

    /// The cache of the activations entering block `block`, `dim` values (H×W×C) per item.
    pub fn at_block(data_dir: &Path, dataset: &str, backbone: &str, input_size: u32, block: usize, dim: usize) -> Self {
        let name = format!("{backbone}-{input_size}px-block{block}-v1.f32");
        Self { path: Self::dataset_dir(data_dir, dataset).join(name), dim, append: Mutex::new(()) }
    }

    /// The cache's file (what `storage::Objects` pushes and pulls).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder of all of a dataset's feature files.
    pub fn dataset_dir(data_dir: &Path, dataset: &str) -> PathBuf {
        data_dir.join("features").join(dataset)
    }

    fn record_len(&self) -> usize {
        8 + 4 * self.dim
    }

    /// The cached features of the `wanted` seqs (those present).
    pub fn read(&self, wanted: &std::collections::HashSet<u64>) -> anyhow::Result<HashMap<u64, Vec<f32>>> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(err) => return Err(err).with_context(|| format!("cannot open {}", self.path.display())),
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut record = vec![0u8; self.record_len()];
        let mut found = HashMap::with_capacity(wanted.len());
        loop {
            match reader.read_exact(&mut record) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(err) => return Err(err).with_context(|| format!("cannot read {}", self.path.display())),
            }
            let seq = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
            if wanted.contains(&seq) {
                let values =
                    record[8..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
                found.insert(seq, values);
            }
        }
        Ok(found)
    }

    /// Appends features durably (fsync before returning).
    pub fn append(&self, rows: &[(u64, Vec<f32>)]) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let _guard = self.append.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = OpenOptions::new().create(true).read(true).append(true).open(&self.path)?;
        let len = file.metadata()?.len();
        let whole = len - len % self.record_len() as u64;
        if whole != len {
            file.set_len(whole)?; // a record torn by a crash
        }
        let mut writer = BufWriter::new(&file);
        for (seq, values) in rows {
            anyhow::ensure!(values.len() == self.dim, "feature of {} values, expected {}", values.len(), self.dim);
            writer.write_all(&seq.to_le_bytes())?;
            for value in values {
                writer.write_all(&value.to_le_bytes())?;
            }
        }
        writer.flush()?;
        drop(writer);
        file.sync_data()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn round_trips_and_survives_a_torn_record() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let cache = FeatureCache::new(dir.path(), "shoes", "lite0-abc", 64, 3);
        assert!(cache.read(&HashSet::from([1]))?.is_empty(), "no file yet reads as empty");
        cache.append(&[(1, vec![1.0, 2.0, 3.0]), (2, vec![4.0, 5.0, 6.0])])?;
        // A crash in the middle of the next append leaves half a record.
        let mut file = OpenOptions::new().append(true).open(&cache.path)?;
        file.write_all(&7u64.to_le_bytes()[..5])?;
        drop(file);
        let read = cache.read(&HashSet::from([1, 2, 7]))?;
        assert_eq!(read.len(), 2);
        assert_eq!(read[&2], vec![4.0, 5.0, 6.0]);
        cache.append(&[(7, vec![7.0, 8.0, 9.0])])?;
        let read = cache.read(&HashSet::from([1, 7]))?;
        assert_eq!(read[&1], vec![1.0, 2.0, 3.0]);
        assert_eq!(read[&7], vec![7.0, 8.0, 9.0], "the torn record was cut off, the new one reads whole");
        assert!(cache.append(&[(8, vec![1.0])]).is_err(), "wrong width is refused");
        Ok(())
    }
}
