//! The object store (`storage::Objects`) as two processes with data dirs of their own see it: on
//! the PostgreSQL pass a real S3 server (SeaweedFS, `scripts/test-postgres.sh`), where what one
//! pushes the other pulls; on the SQLite pass the data dir itself, where pushes and pulls have
//! nothing to do and the data dir is the store.

use std::path::Path;

use lookalike::storage::{BlobStore, Objects};

use super::support;

/// Two stores over data dirs of their own; on S3 both on the prefix of the first dir.
fn two_stores(a: &Path, b: &Path) -> (Objects, Objects) {
    let settings = support::settings(a);
    let open = |dir: &Path| Objects::open(&settings.storage, dir).expect("open the store");
    (open(a), open(b))
}

fn write(dir: &Path, files: &[(&str, &str)]) {
    lookalike::storage::remove_dir_if_exists(dir).expect("clear");
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn what_one_process_stores_another_reads() {
    let (dir_a, dir_b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let (a, b) = two_stores(dir_a.path(), dir_b.path());
    a.check().expect("the store answers");
    let remote = a.is_remote();
    eprintln!("object store: {}", a.location());

    // Originals: put through one, read through the other (on the local store, the same dir).
    let (blobs_a, blobs_b) = (BlobStore::new(a.clone()), BlobStore::new(b.clone()));
    let key = BlobStore::new_key("shop");
    blobs_a.put_blocking(&key, b"an image".to_vec(), true).expect("put");
    let reader = if remote { &blobs_b } else { &blobs_a };
    assert_eq!(reader.get_blocking(&key).expect("get"), b"an image");
    blobs_a.put_many_blocking(vec![(format!("{key}x"), b"two".to_vec())]).expect("put many");
    assert_eq!(reader.get_blocking(&format!("{key}x")).expect("get"), b"two");
    blobs_a.delete_dataset("shop").expect("delete the dataset's images");
    let gone = reader.get_blocking(&key).expect_err("deleted");
    assert_eq!(gone.kind(), std::io::ErrorKind::NotFound, "{gone}");

    // A folder (with a subfolder) pushed by A is pulled whole by B.
    let (index_a, index_b) = (dir_a.path().join("indexes/shop/m1"), dir_b.path().join("indexes/shop/m1"));
    write(&index_a, &[("index.json", "first"), ("hnsw/graph", "links 1")]);
    a.push_dir(&index_a).expect("push");
    if !remote {
        assert!(!b.pull_dir(&index_b).expect("pull"), "nothing to pull from the local store of another dir");
        assert!(a.pull_dir(&index_a).expect("pull"), "the local store is the data dir");
        return;
    }
    assert!(b.pull_dir(&index_b).expect("pull"), "the store has the folder");
    assert_eq!(
        (read(&index_b.join("index.json")), read(&index_b.join("hnsw/graph"))),
        ("first".into(), "links 1".into())
    );

    // Unchanged in the store: not fetched again (a local edit stays); pushed anew: replaced whole.
    std::fs::write(index_b.join("index.json"), "edited here").expect("edit");
    b.pull_dir(&index_b).expect("pull");
    assert_eq!(read(&index_b.join("index.json")), "edited here", "an unchanged folder was fetched again");
    write(&index_a, &[("index.json", "second"), ("hnsw/graph", "links 2"), ("hnsw/more", "new file")]);
    a.push_dir(&index_a).expect("push again");
    b.pull_dir(&index_b).expect("pull again");
    let pulled: Vec<String> =
        ["index.json", "hnsw/graph", "hnsw/more"].iter().map(|f| read(&index_b.join(f))).collect();
    assert_eq!(pulled, ["second", "links 2", "new file"]);

    // Single files (artifacts, feature caches, uploads), streamed both ways.
    let (file_a, file_b) = (dir_a.path().join("artifacts/j1/loss.json"), dir_b.path().join("artifacts/j1/loss.json"));
    assert!(!b.pull_file(&file_b).expect("pull a missing file"), "the store lacks it yet");
    let big: String = (0..3_000_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    lookalike::storage::write_atomic(&file_a, big.as_bytes(), false).expect("write");
    a.push_file(&file_a).expect("push a file");
    assert_eq!(a.stored_size(&file_a).expect("size"), Some(big.len() as u64));
    assert!(b.pull_file(&file_b).expect("pull"));
    assert_eq!(read(&file_b), big);
    a.delete_file(&file_a).expect("delete");
    assert_eq!(a.stored_size(&file_a).expect("size"), None);

    // A deleted tree is gone from the store: B finds nothing more to pull.
    a.delete_tree(&dir_a.path().join("indexes/shop")).expect("delete the dataset's indexes");
    assert!(!index_a.exists());
    lookalike::storage::remove_dir_if_exists(&index_b).expect("clear");
    assert!(!b.pull_dir(&index_b).expect("pull"), "the folder is gone from the store");
}
