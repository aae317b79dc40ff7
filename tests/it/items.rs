//! One item's life over HTTP: added (searchable at once), read, paged,
//! compared, deleted (never returned again, also after a restart); then the
//! dataset itself is deleted with everything it held.

use serde_json::Value;

use super::support::{self, Client};

fn ids(body: &Value) -> Vec<String> {
    body["results"].as_array().expect("results").iter().map(|r| r["item_id"].as_str().expect("id").to_owned()).collect()
}

async fn add_item(client: &Client, image: Vec<u8>, label: &str, id: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("label", label.to_owned())
        .text("item_id", id.to_owned())
        .part("image", reqwest::multipart::Part::bytes(image).file_name("x.png"));
    let response = client.http.post(client.url("/datasets/shop/items")).multipart(form).send().await.expect("post");
    support::status_json(response).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_is_added_found_paged_deleted_and_stays_deleted() {
    let data = tempfile::tempdir().expect("tempdir");
    let (server, client) = support::start(support::settings(data.path())).await;
    let subset = support::fashion_subset(3, 1);
    support::ingest(&client, "shop", subset.catalogue_zip.clone()).await;

    // Added: searchable as soon as the answer arrives, under an id with a slash.
    let (label, image) = subset.queries[7].clone();
    let (status, item) = add_item(&client, image.clone(), &label, "new/0001").await;
    assert_eq!(status, 201, "{item}");
    assert_eq!(
        (item["item_id"].as_str(), item["width"].as_u64(), item["height"].as_u64()),
        (Some("new/0001"), Some(28), Some(28))
    );
    let (status, found) = client.search_raw("shop", image.clone(), "&k=3").await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(ids(&found)[0], "new/0001");
    assert!(found["results"][0]["distance"].as_f64().expect("distance") < 1e-4);

    // Read back: the row, the original bytes with their content type.
    let (status, got) = client.get("/datasets/shop/items/new%2F0001").await;
    assert_eq!((status, &got["label"]), (200, &Value::from(label.clone())));
    let response = client.http.get(client.url("/datasets/shop/items/new%2F0001/image")).send().await.expect("get");
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.bytes().await.expect("bytes").to_vec(), image);

    // Paging with a cursor visits every item exactly once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = client.get(&format!("/datasets/shop/items?limit=7&cursor={cursor}")).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"].as_array().expect("items").iter().map(|i| i["item_id"].as_str().expect("id").to_owned()),
        );
        match page["next"].as_str() {
            Some(next) => cursor = next.replace('/', "%2F"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 31);
    let mut unique = seen.clone();
    unique.dedup();
    assert_eq!(unique, seen, "pages are sorted and never repeat");

    // Similar leaves the item itself out.
    let (status, similar) = client.get("/datasets/shop/items/new%2F0001/similar?k=5").await;
    assert_eq!(status, 200, "{similar}");
    assert_eq!(similar["results"].as_array().expect("results").len(), 5);
    assert!(!ids(&similar).contains(&"new/0001".to_owned()));

    // Deleted: gone from reads and from every search, before and after a restart.
    let response = client.http.delete(client.url("/datasets/shop/items/new%2F0001")).send().await.expect("delete");
    assert_eq!(response.status(), 204);
    let (status, _) = client.get("/datasets/shop/items/new%2F0001").await;
    assert_eq!(status, 404);
    let (_, found) = client.search_raw("shop", image.clone(), "&k=31").await;
    assert!(!ids(&found).contains(&"new/0001".to_owned()));
    assert_eq!(found["results"].as_array().expect("results").len(), 30, "all the others");
    server.stop().await.expect("stop");

    let (server, client) = support::start(support::settings(data.path())).await;
    let (_, found) = client.search_raw("shop", image.clone(), "&k=1000").await;
    assert!(!ids(&found).contains(&"new/0001".to_owned()), "a deleted item came back after a restart");
    assert_eq!(found["results"].as_array().expect("results").len(), 30);
    let (status, again) = add_item(&client, image.clone(), &label, "new/0002").await;
    assert_eq!(status, 201, "{again}");

    // The dataset goes with its items, images and index.
    let response = client.http.delete(client.url("/datasets/shop")).send().await.expect("delete");
    assert_eq!(response.status(), 204);
    let (status, _) = client.get("/datasets/shop").await;
    assert_eq!(status, 404);
    assert!(!data.path().join("blobs/shop").exists(), "images left behind");
    assert!(!data.path().join("indexes/shop").exists(), "index left behind");
    let (status, body) = client.search_raw("shop", image, "").await;
    assert_eq!((status, &body["error"]["code"]), (404, &Value::from("dataset_not_found")));
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_gate_reads_and_writes() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut settings = support::settings(data.path());
    settings.auth.admin_keys = "admin-secret".into();
    settings.auth.read_keys = "reader-secret, other-reader".into();
    let (server, client) = support::start(settings).await;
    let get = |path: &str, key: Option<&str>| {
        let mut request = client.http.get(client.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    assert_eq!(get("/healthz", None).await.expect("get").status(), 200);
    let (status, ready) = support::status_json(get("/readyz", None).await.expect("get")).await;
    assert_eq!(status, 200);
    // This test binary has no CUDA: `auto` (the default) runs the model on the CPU, and says so.
    assert_eq!((&ready["status"], &ready["device"]), (&Value::from("ready"), &Value::from("cpu")), "{ready}");
    assert_eq!(get("/metrics", None).await.expect("get").status(), 200);
    let (status, body) = support::status_json(get("/datasets", None).await.expect("get")).await;
    assert_eq!((status, &body["error"]["code"]), (401, &Value::from("unauthorized")));
    let (status, _) = support::status_json(get("/datasets", Some("wrong")).await.expect("get")).await;
    assert_eq!(status, 401);
    assert_eq!(get("/datasets", Some("other-reader")).await.expect("get").status(), 200);
    let form = reqwest::multipart::Form::new().text("name", "x");
    let response = client.http.post(client.url("/datasets")).bearer_auth("reader-secret").multipart(form);
    let (status, body) = support::status_json(response.send().await.expect("post")).await;
    assert_eq!((status, &body["error"]["code"]), (403, &Value::from("forbidden")));
    let form = reqwest::multipart::Form::new().text("name", "x");
    let response = client.http.post(client.url("/datasets")).bearer_auth("admin-secret").multipart(form);
    let (status, body) = support::status_json(response.send().await.expect("post")).await;
    assert_eq!((status, &body["error"]["code"]), (400, &Value::from("missing_field")), "admin passes the gate");
    server.stop().await.expect("stop");
}
