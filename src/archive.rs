//! Reading catalogue archives (`.zip`, `.tar`, `.tar.gz`) safely.
//!
//! An upload is checked whole by [`scan`] before its ingest job is queued, so
//! a bad archive is refused with a 4xx and nothing is stored: the format is
//! recognised by its magic bytes, every entry name is checked (no absolute
//! path, no `..`, no link), and entry count and unpacked size are bounded.
//! [`for_each_image`] then streams the image entries to the ingest job; it
//! reads entries directly from the archive and never unpacks it to disk.
//! Both run on blocking threads.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

/// Image file extensions accepted in a catalogue (`API.md`).
pub const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "webp", "gif", "bmp"];
/// Name of the optional label file at the archive root.
pub const LABELS_CSV: &str = "labels.csv";
/// Most skipped entries whose reason is kept one by one (all are counted).
pub const MAX_SKIP_REASONS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Zip,
    Tar,
    TarGz,
}

#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    pub max_entries: u64,
    pub max_unpacked_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a .zip, .tar or .tar.gz archive")]
    Unsupported,
    #[error("the archive holds no image to ingest")]
    Empty,
    #[error("unsafe entry {0:?}: absolute paths, `..` and links are not allowed")]
    UnsafePath(String),
    #[error("the archive has more than {0} entries")]
    TooManyEntries(u64),
    #[error("the archive unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    #[error("labels.csv: {0}")]
    BadLabels(String),
}

impl From<zip::result::ZipError> for ArchiveError {
    fn from(err: zip::result::ZipError) -> Self {
        ArchiveError::Corrupt(err.to_string())
    }
}

/// One image to ingest: where it is in the archive and what it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub item_id: String,
    pub label: String,
}

/// Something in the archive that will not be ingested, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What `scan` found: the images to ingest and the entries left out.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub format: Format,
    pub entries: Vec<Entry>,
    pub skipped: Vec<Skipped>,
    pub skipped_count: usize,
}

impl Manifest {
    fn skip(&mut self, path: &str, reason: impl Into<String>) {
        self.skipped_count += 1;
        if self.skipped.len() < MAX_SKIP_REASONS {
            self.skipped.push(Skipped { path: path.to_owned(), reason: reason.into() });
        }
    }
}

/// Recognises the archive format from the file's first bytes.
pub fn detect(path: &Path) -> io::Result<Option<Format>> {
    let mut head = [0u8; 512];
    let mut file = File::open(path)?;
    let mut filled = 0;
    while filled < head.len() {
        let n = file.read(&mut head[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    let head = &head[..filled];
    Ok(if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Some(Format::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some(Format::TarGz)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(Format::Tar)
    } else {
        None
    })
}

/// Checks an archive whole and lists the images it will ingest.
pub fn scan(path: &Path, limits: ArchiveLimits) -> Result<Manifest, ArchiveError> {
    let format = detect(path).map_err(|e| ArchiveError::Corrupt(e.to_string()))?.ok_or(ArchiveError::Unsupported)?;
    let mut files = Vec::new();
    let mut labels_csv = None;
    let mut count = 0u64;
    let mut unpacked = 0u64;
    visit(path, format, &mut |name, size, reader| {
        count += 1;
        if count > limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        unpacked = unpacked.saturating_add(size);
        if unpacked > limits.max_unpacked_bytes {
            return Err(ArchiveError::TooLarge(limits.max_unpacked_bytes));
        }
        if name == LABELS_CSV {
            let mut text = String::new();
            reader
                .take(size.min(limits.max_unpacked_bytes))
                .read_to_string(&mut text)
                .map_err(|e| ArchiveError::BadLabels(format!("unreadable: {e}")))?;
            labels_csv = Some(text);
        } else {
            files.push(name.to_owned());
        }
        Ok(())
    })?;
    let mut manifest = Manifest { format, entries: Vec::new(), skipped: Vec::new(), skipped_count: 0 };
    match labels_csv {
        Some(csv) => by_labels_csv(&csv, &files, &mut manifest)?,
        None => by_folders(&files, &mut manifest),
    }
    if manifest.entries.is_empty() {
        return Err(ArchiveError::Empty);
    }
    Ok(manifest)
}

/// Layout 1: `<label>/<file>.<ext>`; the item id is the path without extension.
fn by_folders(files: &[String], manifest: &mut Manifest) {
    let mut seen = HashSet::new();
    for path in files {
        let Some(stem) = image_stem(path) else {
            manifest.skip(path, "not an image file (jpg, jpeg, png, webp, gif, bmp)");
            continue;
        };
        let Some((label, _)) = path.split_once('/') else {
            manifest.skip(path, "not inside a label folder");
            continue;
        };
        push_entry(manifest, &mut seen, path, stem.to_owned(), label.to_owned());
    }
}

/// Layout 2: a root `labels.csv` with header `file,label[,item_id]`, read as
/// RFC 4180 CSV (a field may be quoted to hold a comma or a quote); fields are
/// trimmed and blank lines ignored.
fn by_labels_csv(csv: &str, files: &[String], manifest: &mut Manifest) -> Result<(), ArchiveError> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(csv.as_bytes());
    let mut rows = reader.records().filter(|row| !matches!(row, Ok(fields) if fields.iter().all(str::is_empty)));
    let header_row = match rows.next() {
        Some(row) => row.map_err(bad_csv)?,
        None => return Err(ArchiveError::BadLabels("empty file".into())),
    };
    let header: Vec<&str> = header_row.iter().map(|f| f.trim_start_matches('\u{feff}')).collect();
    let with_ids = match header.as_slice() {
        ["file", "label"] => false,
        ["file", "label", "item_id"] => true,
        _ => {
            return Err(ArchiveError::BadLabels(format!("header must be `file,label[,item_id]`, found {header:?}")));
        }
    };
    let present: HashSet<&str> = files.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    let mut listed = HashSet::new();
    for row in rows {
        let row = row.map_err(bad_csv)?;
        let line = row.position().map_or(0, csv::Position::line);
        let (file, label, item_id) = match (row.len(), with_ids) {
            (2, false) => (&row[0], &row[1], None),
            (3, true) => (&row[0], &row[1], Some(&row[2])),
            _ => {
                return Err(ArchiveError::BadLabels(format!(
                    "line {line}: expected {} fields, found {}",
                    header.len(),
                    row.len()
                )));
            }
        };
        let file = file.trim_start_matches("./");
        listed.insert(file.to_owned());
        if !present.contains(file) {
            manifest.skip(file, format!("listed on line {line} of labels.csv but not in the archive"));
            continue;
        }
        let Some(stem) = image_stem(file) else {
            manifest.skip(file, "not an image file (jpg, jpeg, png, webp, gif, bmp)");
            continue;
        };
        let id = item_id.filter(|id| !id.is_empty()).unwrap_or(stem);
        push_entry(manifest, &mut seen, file, id.to_owned(), label.to_owned());
    }
    for path in files.iter().filter(|f| !listed.contains(f.as_str())) {
        manifest.skip(path, "not listed in labels.csv");
    }
    Ok(())
}

/// A row the CSV reader could not read (its message names the line).
fn bad_csv(err: csv::Error) -> ArchiveError {
    ArchiveError::BadLabels(err.to_string())
}

fn push_entry(manifest: &mut Manifest, seen: &mut HashSet<String>, path: &str, item_id: String, label: String) {
    if let Err(problem) = check_item_id(&item_id) {
        manifest.skip(path, problem);
    } else if let Err(problem) = check_label(&label) {
        manifest.skip(path, problem);
    } else if !seen.insert(item_id.clone()) {
        manifest.skip(path, format!("duplicate item id {item_id:?}"));
    } else {
        manifest.entries.push(Entry { path: path.to_owned(), item_id, label });
    }
}

/// The path without its extension, when the extension is an image one.
fn image_stem(path: &str) -> Option<&str> {
    let (stem, ext) = path.rsplit_once('.')?;
    let file = path.rsplit('/').next().unwrap_or(path);
    if file.starts_with('.') || stem.is_empty() || stem.ends_with('/') {
        return None;
    }
    IMAGE_EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)).then_some(stem)
}

/// `API.md`: 1 to 256 printable characters, no leading `/`, no `..` segment.
pub fn check_item_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > 256 {
        return Err(format!("item id {id:?} must have 1 to 256 characters"));
    }
    if id.chars().any(char::is_control) {
        return Err(format!("item id {id:?} has a control character"));
    }
    if id.starts_with('/') || id.split('/').any(|s| s == "..") {
        return Err(format!("item id {id:?} may not start with `/` or hold a `..` segment"));
    }
    Ok(())
}

/// A label: 1 to 256 printable characters.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.chars().count() > 256 || label.chars().any(char::is_control) {
        return Err(format!("label {label:?} must have 1 to 256 printable characters"));
    }
    Ok(())
}

/// Makes an entry name safe or refuses it: relative, no `..`, `/`-separated.
fn clean_name(raw: &str) -> Result<String, ArchiveError> {
    let name = raw.replace('\\', "/");
    let name = name.trim_start_matches("./");
    let unsafe_name = name.starts_with('/')
        || name.contains(':')
        || name.split('/').any(|part| part == "..")
        || name.chars().any(|c| c == '\0');
    if unsafe_name {
        return Err(ArchiveError::UnsafePath(raw.to_owned()));
    }
    Ok(name.to_owned())
}

/// Called with each regular file's cleaned name, declared size and contents.
type EntryVisitor<'a> = dyn FnMut(&str, u64, &mut dyn Read) -> Result<(), ArchiveError> + 'a;

/// Called with each manifest entry and its bytes (or why they could not be read).
pub type ImageVisitor<'a> = dyn FnMut(&Entry, Result<Vec<u8>, String>) -> anyhow::Result<()> + 'a;

/// Calls `each(name, size, reader)` for every regular file of the archive, in
/// archive order; directories are passed over, links refuse the archive.
fn visit(path: &Path, format: Format, each: &mut EntryVisitor<'_>) -> Result<(), ArchiveError> {
    let corrupt = |e: io::Error| ArchiveError::Corrupt(e.to_string());
    let file = File::open(path).map_err(corrupt)?;
    match format {
        Format::Zip => {
            let mut zip = zip::ZipArchive::new(BufReader::new(file))?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i)?;
                let raw = entry.name()?.into_owned();
                let name = clean_name(&raw)?;
                if entry.is_symlink() {
                    return Err(ArchiveError::UnsafePath(raw));
                }
                if entry.is_dir() {
                    continue;
                }
                let size = entry.size();
                each(&name, size, &mut entry)?;
            }
            Ok(())
        }
        Format::Tar => visit_tar(tar::Archive::new(BufReader::new(file)), each),
        Format::TarGz => visit_tar(tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file))), each),
    }
}

fn visit_tar<R: Read>(mut archive: tar::Archive<R>, each: &mut EntryVisitor<'_>) -> Result<(), ArchiveError> {
    let corrupt = |e: io::Error| ArchiveError::Corrupt(e.to_string());
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let name = clean_name(&raw)?;
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(ArchiveError::UnsafePath(raw));
        }
        if kind.is_dir() || kind.is_pax_global_extensions() || kind.is_pax_local_extensions() || kind.is_gnu_longname()
        {
            continue;
        }
        if !kind.is_file() {
            return Err(ArchiveError::UnsafePath(raw));
        }
        let size = entry.size();
        each(&name, size, &mut entry)?;
    }
    Ok(())
}

/// Streams the bytes of each manifest entry to `each`, in archive order.
/// An entry longer than `max_entry_bytes` is passed as `Err` (skipped by the caller).
pub fn for_each_image(
    path: &Path,
    manifest: &Manifest,
    max_entry_bytes: u64,
    each: &mut ImageVisitor<'_>,
) -> anyhow::Result<()> {
    let wanted: HashMap<&str, &Entry> = manifest.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut failure = None;
    let result = visit(path, manifest.format, &mut |name, size, reader| {
        let Some(entry) = wanted.get(name) else { return Ok(()) };
        let bytes = if size > max_entry_bytes {
            Err(format!("{size} bytes is more than the {max_entry_bytes} allowed for one image"))
        } else {
            let mut bytes = Vec::with_capacity(size as usize);
            match reader.take(max_entry_bytes + 1).read_to_end(&mut bytes) {
                Ok(_) if bytes.len() as u64 > max_entry_bytes => Err("entry larger than declared".to_owned()),
                Ok(_) => Ok(bytes),
                Err(err) => Err(format!("unreadable entry: {err}")),
            }
        };
        if let Err(err) = each(entry, bytes) {
            failure = Some(err);
            return Err(ArchiveError::Corrupt("stopped".into()));
        }
        Ok(())
    });
    if let Some(err) = failure {
        return Err(err);
    }
    result.map_err(anyhow::Error::from)
}
