//! Bad input for every endpoint: each gets the right 4xx and error code, and
//! nothing already stored changes.

use serde_json::Value;

use super::support::{self, Client};

/// Small limits so the oversized cases stay small.
const MAX_IMAGE_BYTES: u64 = 256 * 1024;
const MAX_UPLOAD_BYTES: u64 = 4 * 1024 * 1024;

/// What the server has stored, as the API shows it.
async fn snapshot(client: &Client) -> Vec<Value> {
    let mut parts = Vec::new();
    for path in ["/datasets", "/datasets/base/items?limit=1000", "/jobs", "/datasets/base/labels"] {
        let (status, body) = client.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        parts.push(body);
    }
    parts
}

fn tar_gz_with_symlink() -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    builder.append_link(&mut header, "shirt/link.png", "/etc/passwd").expect("symlink entry");
    builder.into_inner().expect("tar").finish().expect("gz")
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(body["error"]["code"], want_code, "{what}: {body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut settings = support::settings(data.path());
    settings.limits.max_image_bytes = MAX_IMAGE_BYTES;
    settings.limits.max_upload_bytes = MAX_UPLOAD_BYTES;
    let (server, client) = support::start(settings).await;
    let subset = support::fashion_subset(2, 1);
    support::ingest(&client, "base", subset.catalogue_zip.clone()).await;
    let png = subset.queries[0].1.clone();
    let truncated_png = png[..png.len() / 2].to_vec();
    let text = b"this is not an image\n".to_vec();
    let before = snapshot(&client).await;

    // Search: broken images, bad k, unknown dataset, oversized and unsupported bodies.
    let (s, b) = client.search_raw("base", text.clone(), "").await;
    assert_error(s, &b, 400, "invalid_image", "text file as image");
    let (s, b) = client.search_multipart("base", truncated_png.clone(), "5").await;
    assert_error(s, &b, 400, "invalid_image", "truncated PNG");
    let (s, b) = client.search_raw("base", png.clone(), "&k=0").await;
    assert_error(s, &b, 400, "invalid_k", "k=0");
    let (s, b) = client.search_raw("base", png.clone(), "&k=1001").await;
    assert_error(s, &b, 400, "invalid_k", "k above the limit");
    let (s, b) = client.search_multipart("base", png.clone(), "ten").await;
    assert_error(s, &b, 400, "invalid_k", "k not a number");
    let (s, b) = client.search_raw("nope", png.clone(), "").await;
    assert_error(s, &b, 404, "dataset_not_found", "unknown dataset");
    let (s, b) = client.search_raw("base", vec![0u8; (MAX_IMAGE_BYTES * 2) as usize], "").await;
    assert_error(s, &b, 413, "payload_too_large", "oversized search body");
    let response = client.http.post(client.url("/search?dataset=base")).body("x").send().await.expect("post");
    let (s, b) = support::status_json(response).await;
    assert_error(s, &b, 415, "unsupported_media_type", "search without a content type");

    // Datasets: bad archives, bad names, duplicates, oversize.
    let (s, b) = client.upload("new1", Vec::new(), "empty.zip").await;
    assert_error(s, &b, 415, "unsupported_archive", "empty file as archive");
    let (s, b) = client.upload("new2", support::zip_of(&[]), "empty.zip").await;
    assert_error(s, &b, 400, "empty_archive", "zip without entries");
    let (s, b) = client.upload("new3", text.clone(), "notes.zip").await;
    assert_error(s, &b, 415, "unsupported_archive", "text file as archive");
    let (s, b) =
        client.upload("new4", support::zip_of(&[("shirt/a.png", &png), ("../evil/b.png", &png)]), "t.zip").await;
    assert_error(s, &b, 400, "unsafe_archive_path", "path traversal entry");
    let (s, b) = client.upload("new5", support::zip_of(&[("/abs/b.png", &png)]), "t.zip").await;
    assert_error(s, &b, 400, "unsafe_archive_path", "absolute path entry");
    let (s, b) = client.upload("new6", tar_gz_with_symlink(), "t.tar.gz").await;
    assert_error(s, &b, 400, "unsafe_archive_path", "symlink entry");
    let (s, b) = client.upload("new7", support::zip_of(&[("readme.txt", b"hello")]), "t.zip").await;
    assert_error(s, &b, 400, "empty_archive", "archive without images");
    let (s, b) = client.upload("base", subset.catalogue_zip.clone(), "c.zip").await;
    assert_error(s, &b, 409, "dataset_exists", "duplicate dataset name");
    let (s, b) = client.upload("bad name!", subset.catalogue_zip.clone(), "c.zip").await;
    assert_error(s, &b, 400, "invalid_dataset_name", "invalid dataset name");
    let (s, b) = client.upload("new8", vec![7u8; (MAX_UPLOAD_BYTES + 1024) as usize], "big.zip").await;
    assert_error(s, &b, 413, "payload_too_large", "oversized archive");
    let (s, b) = client.get("/datasets/nope").await;
    assert_error(s, &b, 404, "dataset_not_found", "GET unknown dataset");
    let response = client.http.delete(client.url("/datasets/nope")).send().await.expect("delete");
    let (s, b) = support::status_json(response).await;
    assert_error(s, &b, 404, "dataset_not_found", "DELETE unknown dataset");

    // Items: broken images, missing fields, unknown ids, duplicates.
    let add = |image: Vec<u8>, label: Option<&str>, id: &str| {
        let mut form = reqwest::multipart::Form::new()
            .text("item_id", id.to_owned())
            .part("image", reqwest::multipart::Part::bytes(image).file_name("x.png"));
        if let Some(label) = label {
            form = form.text("label", label.to_owned());
        }
        client.http.post(client.url("/datasets/base/items")).multipart(form).send()
    };
    let (s, b) = support::status_json(add(text.clone(), Some("shirt"), "t1").await.expect("post")).await;
    assert_error(s, &b, 400, "invalid_image", "text file as item image");
    let (s, b) = support::status_json(add(truncated_png.clone(), Some("shirt"), "t2").await.expect("post")).await;
    assert_error(s, &b, 400, "invalid_image", "truncated PNG as item image");
    let (s, b) = support::status_json(add(png.clone(), None, "t3").await.expect("post")).await;
    assert_error(s, &b, 400, "missing_field", "item without label");
    let (s, b) = support::status_json(add(png.clone(), Some("shirt"), "../x").await.expect("post")).await;
    assert_error(s, &b, 400, "invalid_item_id", "item id with ..");
    let existing = before[1]["items"][0]["item_id"].as_str().expect("an item").to_owned();
    let (s, b) = support::status_json(add(png.clone(), Some("shirt"), &existing).await.expect("post")).await;
    assert_error(s, &b, 409, "item_exists", "duplicate item id");
    let (s, b) = client.get("/datasets/base/items/no%2Fsuch").await;
    assert_error(s, &b, 404, "item_not_found", "unknown item");
    let (s, b) = client.get("/datasets/base/items?limit=0").await;
    assert_error(s, &b, 400, "invalid_limit", "limit 0");
    let (s, b) = client.get("/datasets/base/items/no%2Fsuch/similar").await;
    assert_error(s, &b, 404, "item_not_found", "similar of unknown item");
    let (s, b) = client.get(&format!("/datasets/base/items/{}/similar?k=0", existing.replace('/', "%2F"))).await;
    assert_error(s, &b, 400, "invalid_k", "similar with k=0");

    // Jobs.
    let (s, b) = client.get("/jobs/does-not-exist").await;
    assert_error(s, &b, 404, "job_not_found", "unknown job");
    let (s, b) = client.get("/jobs?status=sleeping").await;
    assert_error(s, &b, 400, "invalid_status", "unknown job status");
    let response = client.http.post(client.url("/jobs")).body("{not json").header("content-type", "application/json");
    let (s, b) = support::status_json(response.send().await.expect("post")).await;
    assert_error(s, &b, 400, "invalid_json", "malformed job JSON");

    assert_eq!(snapshot(&client).await, before, "a rejected request changed what is stored");
    server.stop().await.expect("stop");
}
