//! Catalogue archives: both layouts, all three formats, and what is refused.

use std::io::Write;
use std::path::Path;

use lookalike::archive::{self, ArchiveError, ArchiveLimits, Format};

const LIMITS: ArchiveLimits = ArchiveLimits { max_entries: 1000, max_unpacked_bytes: 1 << 30 };

fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    std::fs::write(path, crate::support::zip_of(entries)).expect("write zip");
}

fn write_tar(path: &Path, entries: &[(&str, &[u8])], gzip: bool) {
    let file = std::fs::File::create(path).expect("create");
    let write = |builder: &mut tar::Builder<Box<dyn Write>>| {
        for (name, bytes) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, *bytes).expect("append");
        }
    };
    let sink: Box<dyn Write> =
        if gzip { Box::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast())) } else { Box::new(file) };
    let mut builder = tar::Builder::new(sink);
    write(&mut builder);
    builder.into_inner().expect("finish").flush().expect("flush");
}

#[test]
fn folder_layout_in_every_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries: [(&str, &[u8]); 4] =
        [("sneaker/0042.png", b"a"), ("bag/x.JPG", b"b"), ("README.txt", b"c"), ("loose.png", b"d")];
    for (file, format) in [("c.zip", Format::Zip), ("c.tar", Format::Tar), ("c.tar.gz", Format::TarGz)] {
        let path = dir.path().join(file);
        match format {
            Format::Zip => write_zip(&path, &entries),
            Format::Tar => write_tar(&path, &entries, false),
            Format::TarGz => write_tar(&path, &entries, true),
        }
        let manifest = archive::scan(&path, LIMITS).expect("scan");
        assert_eq!(manifest.format, format);
        let ids: Vec<(&str, &str)> = manifest.entries.iter().map(|e| (e.item_id.as_str(), e.label.as_str())).collect();
        assert_eq!(ids, [("sneaker/0042", "sneaker"), ("bag/x", "bag")], "{file}");
        assert_eq!(manifest.skipped_count, 2, "{file}: README.txt and loose.png are skipped with reasons");
        let mut seen = Vec::new();
        archive::for_each_image(&path, &manifest, 1 << 20, &mut |entry, bytes| {
            seen.push((entry.item_id.clone(), bytes.expect("bytes")));
            Ok(())
        })
        .expect("stream");
        assert_eq!(seen, [("sneaker/0042".to_owned(), b"a".to_vec()), ("bag/x".to_owned(), b"b".to_vec())]);
    }
}

#[test]
fn labels_csv_layout_with_and_without_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.zip");
    let csv = b"file,label,item_id\nimg/1.png,shirt,s-1\nimg/2.png,coat,\nimg/missing.png,coat,m\n";
    write_zip(&path, &[("labels.csv", csv), ("img/1.png", b"1"), ("img/2.png", b"2"), ("img/3.png", b"3")]);
    let manifest = archive::scan(&path, LIMITS).expect("scan");
    let ids: Vec<(&str, &str)> = manifest.entries.iter().map(|e| (e.item_id.as_str(), e.label.as_str())).collect();
    assert_eq!(ids, [("s-1", "shirt"), ("img/2", "coat")]);
    let reasons: Vec<&str> = manifest.skipped.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(reasons, ["img/missing.png", "img/3.png"], "missing and unlisted files are reported");

    write_zip(&path, &[("labels.csv", b"name,class\na.png,x\n"), ("a.png", b"1")]);
    assert!(matches!(archive::scan(&path, LIMITS), Err(ArchiveError::BadLabels(_))));
}

#[test]
fn labels_csv_quoted_fields_and_bad_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.zip");
    // A BOM, CRLF ends, quoted fields holding commas and quotes, a blank line, padded fields.
    let csv = "\u{feff}file,label,item_id\r\n\"img/a,b.png\",\"coats, long\",\"id \"\"1\"\"\"\r\n\r\n img/2.png , shirt ,\r\n";
    write_zip(&path, &[("labels.csv", csv.as_bytes()), ("img/a,b.png", b"1"), ("img/2.png", b"2")]);
    let manifest = archive::scan(&path, LIMITS).expect("scan");
    let entries: Vec<(&str, &str, &str)> =
        manifest.entries.iter().map(|e| (e.path.as_str(), e.item_id.as_str(), e.label.as_str())).collect();
    assert_eq!(entries, [("img/a,b.png", "id \"1\"", "coats, long"), ("img/2.png", "img/2", "shirt")]);
    assert_eq!(manifest.skipped_count, 0);

    write_zip(&path, &[("labels.csv", b"file,label\n\na.png,x\nb.png\n"), ("a.png", b"1"), ("b.png", b"2")]);
    match archive::scan(&path, LIMITS) {
        Err(ArchiveError::BadLabels(message)) => assert!(message.contains("line 4"), "{message}"),
        other => panic!("a short row is refused, naming its line: {other:?}"),
    }
}

#[test]
fn refuses_unsafe_and_oversized_archives() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.zip");
    write_zip(&path, &[("a/../../etc/x.png", b"1")]);
    assert!(matches!(archive::scan(&path, LIMITS), Err(ArchiveError::UnsafePath(_))));
    write_zip(&path, &[("a/1.png", b"1"), ("a/2.png", b"2"), ("a/3.png", b"3")]);
    let tight = ArchiveLimits { max_entries: 2, max_unpacked_bytes: 1 << 20 };
    assert!(matches!(archive::scan(&path, tight), Err(ArchiveError::TooManyEntries(2))));
    let small = ArchiveLimits { max_entries: 10, max_unpacked_bytes: 2 };
    assert!(matches!(archive::scan(&path, small), Err(ArchiveError::TooLarge(2))));
    write_zip(&path, &[("a/1.png", b"1"), ("a/1.jpg", b"2")]);
    let manifest = archive::scan(&path, LIMITS).expect("scan");
    assert_eq!(manifest.entries.len(), 1, "a duplicate item id is skipped");
    assert!(manifest.skipped[0].reason.contains("duplicate"));
    std::fs::write(&path, b"plain text").expect("write");
    assert!(matches!(archive::scan(&path, LIMITS), Err(ArchiveError::Unsupported)));
}
