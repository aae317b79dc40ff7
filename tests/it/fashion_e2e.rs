//! The whole slice over real HTTP on real data: a Fashion-MNIST subset is
//! uploaded, ingested by the real pretrained model, searched, and searched
//! again after a restart.

use super::support::{self, Client};

/// Recall@1 on these 1,000 catalogue images / 200 queries at 64 px with the
/// pretrained Lite0 measured 0.775 (`cargo test --test it fashion -- --nocapture`
/// prints it). The floor sits under that so thread timing cannot fail it, and
/// far above chance (0.1); a broken model, preprocessing or index falls below.
const RECALL_AT_1_FLOOR: f64 = 0.70;

/// Every query's results: item ids with distances, in rank order.
async fn run_queries(client: &Client, queries: &[(String, Vec<u8>)]) -> (Vec<Vec<(String, f64)>>, f64) {
    let mut all = Vec::new();
    let mut hits = 0usize;
    for (i, (label, image)) in queries.iter().enumerate() {
        // Alternate the two ways to send a query; both must answer the same way.
        let (status, body) = if i % 2 == 0 {
            client.search_raw("fashion", image.clone(), "&k=10").await
        } else {
            client.search_multipart("fashion", image.clone(), "10").await
        };
        assert_eq!(status, 200, "query {i}: {body}");
        let results = body["results"].as_array().expect("results");
        assert_eq!(results.len(), 10, "query {i}: {body}");
        let distances: Vec<f64> = results.iter().map(|r| r["distance"].as_f64().expect("distance")).collect();
        assert!(distances.windows(2).all(|w| w[0] <= w[1]), "sorted ascending: {distances:?}");
        if results[0]["label"] == label.as_str() {
            hits += 1;
        }
        all.push(
            results
                .iter()
                .map(|r| (r["item_id"].as_str().expect("id").to_owned(), r["distance"].as_f64().expect("d")))
                .collect(),
        );
    }
    (all, hits as f64 / queries.len() as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fashion_subset_ingests_searches_and_survives_restart() {
    let data = tempfile::tempdir().expect("tempdir");
    let subset = support::fashion_subset(100, 20);
    assert_eq!(subset.queries.len(), 200);

    let (server, client) = support::start(support::settings(data.path())).await;
    let job = support::ingest(&client, "fashion", subset.catalogue_zip.clone()).await;
    assert_eq!(job["result"]["ingested"], 1000, "{job}");
    assert_eq!(job["result"]["skipped"], 0, "{job}");
    assert_eq!(job["progress"], 1.0);
    let (_, dataset) = client.get("/datasets/fashion").await;
    assert_eq!(dataset["status"], "ready");
    assert_eq!(dataset["items"], 1000);
    assert_eq!(dataset["labels"], 10);

    let (before, recall_at_1) = run_queries(&client, &subset.queries).await;
    println!("Recall@1 on 1000 catalogue / 200 queries: {recall_at_1:.3}");
    assert!(recall_at_1 >= RECALL_AT_1_FLOOR, "Recall@1 {recall_at_1:.3} under the floor {RECALL_AT_1_FLOOR}");

    // The label filter returns k items of that label when k exist.
    let (status, body) = client.search_raw("fashion", subset.queries[0].1.clone(), "&k=50&label=bag").await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 50);
    assert!(results.iter().all(|r| r["label"] == "bag"));

    server.stop().await.expect("clean stop");
    let (server, client) = support::start(support::settings(data.path())).await;
    let (after, _) = run_queries(&client, &subset.queries).await;
    for (i, (a, b)) in before.iter().zip(&after).enumerate() {
        let ids_a: Vec<&str> = a.iter().map(|(id, _)| id.as_str()).collect();
        let ids_b: Vec<&str> = b.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids_a, ids_b, "query {i} changed after restart");
        for ((_, da), (_, db)) in a.iter().zip(b) {
            assert!((da - db).abs() < 1e-6, "query {i}: distance {da} became {db}");
        }
    }
    server.stop().await.expect("clean stop");
}
