//! Learning the catalogue, over real HTTP on real Fashion-MNIST images with
//! the real pretrained backbone: a head-only finetune job raises held-out
//! MAP@R and publishes its charts, but lowers Recall@5 and is refused by
//! `if_better`; promoted anyway, it serves searches; the default job (three
//! trained blocks, blended with the pretrained geometry) still lowers Recall@5 on
//! so small a catalogue and is refused too;
//! a deep generation survives restarts and rollbacks; searches switch models in one
//! swap under load; a rollback goes through a reindex job; a canceled job
//! changes nothing; an interrupted one is resumed after a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lookalike::db::Db;
use lookalike::db::jobs::JobKind;
use serde_json::{Value, json};

use super::support::{self, Client};

/// The bar: held-out MAP@R at least 30% above the pretrained model's.
const MIN_RELATIVE_MAP_GAIN: f64 = 0.30;
/// `finetune.recall_tolerance` of config/default.toml.
const RECALL_TOLERANCE: f64 = 0.005;

async fn post_json(client: &Client, path: &str, body: Value) -> (u16, Value) {
    let response = client.http.post(client.url(path)).json(&body).send().await.expect("POST");
    support::status_json(response).await
}

async fn finetune(client: &Client, dataset: &str, params: Value) -> Value {
    let (status, job) =
        post_json(client, "/jobs", json!({"kind": "finetune", "dataset": dataset, "params": params})).await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["kind"], "finetune");
    assert_eq!(job["status"], "queued");
    job
}

/// The model id and the ranked item ids a search answers.
async fn search(client: &Client, dataset: &str, image: &[u8]) -> (String, Vec<String>) {
    let (status, body) = client.search_raw(dataset, image.to_vec(), "&k=10").await;
    assert_eq!(status, 200, "{body}");
    let ids = body["results"].as_array().expect("results").iter().map(|r| r["item_id"].to_string()).collect();
    (body["model"].as_str().expect("model").to_owned(), ids)
}

async fn png_artifact(client: &Client, job: &str, file: &str) -> image::DynamicImage {
    let response = client.http.get(client.url(&format!("/jobs/{job}/artifacts/{file}"))).send().await.expect("GET");
    assert_eq!(response.status(), 200, "{file}");
    assert_eq!(response.headers()["content-type"], "image/png");
    let bytes = response.bytes().await.expect("body");
    image::load_from_memory(&bytes).unwrap_or_else(|e| panic!("{file} is not a PNG: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_only_finetune_raises_map_at_r_is_refused_for_its_recall_then_promoted_on_request() {
    let data = tempfile::tempdir().expect("tempdir");
    let subset = support::fashion_subset(100, 20);
    let (server, client) = support::start(support::settings(data.path())).await;
    support::ingest(&client, "fashion", subset.catalogue_zip.clone()).await;
    let (_, dataset) = client.get("/datasets/fashion").await;
    let pretrained = dataset["model"].as_str().expect("model").to_owned();
    let query = &subset.queries[0].1;
    assert_eq!(search(&client, "fashion", query).await.0, pretrained);

    // The head alone on the pretrained features, 10 epochs (the default before issue 11)
    // doubles held-out MAP@R on these 1,000 items but lowers Recall@5 from 0.94 to 0.88 (6 of its
    // 100 held-out queries; the noise margin is 0.024): the model issue 11 is about, and the rule
    // refuses it.
    let head_only = json!({"trainable_blocks": 0, "pretrained_share": 0, "epochs": 10});
    let queued = finetune(&client, "fashion", head_only.clone()).await;
    assert_eq!(queued["params"]["mining"], "offline+online", "the job shows the defaults it runs with");
    let refused = client.wait_job(queued["id"].as_str().expect("id")).await;
    assert_eq!(refused["status"], "succeeded", "{refused}");
    let result = &refused["result"];
    let metric = |which: &str, name: &str| result["eval"][which][name].as_f64().expect("metric");
    let (before, after) = (metric("before", "map_at_r"), metric("after", "map_at_r"));
    println!(
        "held-out MAP@R {before:.4} -> {after:.4} ({:+.1}%), Recall@1 {} -> {}, Recall@5 {} -> {}; {} s in all",
        100.0 * (after / before - 1.0),
        result["eval"]["before"]["recall_at_1"],
        result["eval"]["after"]["recall_at_1"],
        result["eval"]["before"]["recall_at_5"],
        result["eval"]["after"]["recall_at_5"],
        result["seconds"]["total"]
    );
    assert!(after >= before * (1.0 + MIN_RELATIVE_MAP_GAIN), "MAP@R {before:.4} -> {after:.4}: {result}");
    assert!(metric("after", "recall_at_5") < metric("before", "recall_at_5") - 0.024, "{result}");
    assert_eq!((&result["promoted"], &result["rule"]), (&json!(false), &json!("recall5_fell")), "{result}");
    assert!(result["decision"].as_str().expect("decision").contains("Recall@5 fell"), "{result}");
    assert!(result["seconds"].get("indexing").is_none(), "nothing is indexed for a refused model: {result}");
    assert_eq!(search(&client, "fashion", query).await.0, pretrained, "the pretrained model still serves");
    let refused_model = result["model"].as_str().expect("model id").to_owned();

    // The same training (same seed, same data: the same head) with promote: always goes into
    // service.
    let job = finetune(
        &client,
        "fashion",
        json!({"promote": "always", "trainable_blocks": 0, "pretrained_share": 0, "epochs": 10}),
    )
    .await;
    let job = client.wait_job(job["id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &job["result"];
    assert_eq!((&result["promoted"], &result["rule"]), (&json!(true), &json!("always")), "{result}");
    assert_eq!(result["eval"]["after"]["map_at_r"].as_f64(), Some(after), "the same model: {result}");
    assert_eq!(result["parent"], pretrained.as_str());
    assert!(result["mining"]["thresholds"]["positive"].as_f64().expect("t_pos") > 0.0, "{result}");
    assert!(result["mining"]["anchors_with_injected_positive"].as_u64().expect("injected") > 0, "{result}");
    let model = result["model"].as_str().expect("model id").to_owned();

    let artifacts: Vec<&str> =
        job["artifacts"].as_array().expect("artifacts").iter().filter_map(Value::as_str).collect();
    for file in ["distance-histogram.png", "loss-curve.png", "mined-pairs.json"] {
        assert!(artifacts.contains(&file), "{file} in {artifacts:?}");
    }
    for file in ["distance-histogram.png", "loss-curve.png"] {
        let png = png_artifact(&client, job["id"].as_str().expect("id"), file).await;
        assert!(png.width() >= 400 && png.height() >= 300, "{file}: {}x{}", png.width(), png.height());
    }
    let (status, mined) =
        client.get(&format!("/jobs/{}/artifacts/mined-pairs.json", job["id"].as_str().unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(mined["model"], pretrained.as_str(), "mined pairs name the model that mined them");
    assert!(!mined["hard_positives"].as_array().expect("pairs").is_empty());

    let (_, models) = client.get("/datasets/fashion/models").await;
    let models = models["models"].as_array().expect("models").clone();
    assert_eq!(models.len(), 3, "{models:?}");
    assert_eq!(
        (&models[0]["id"], &models[0]["active"], &models[0]["parent"]),
        (&json!(pretrained), &json!(false), &Value::Null)
    );
    assert_eq!((&models[1]["id"], &models[1]["active"]), (&json!(refused_model), &json!(false)), "kept, inactive");
    assert_eq!((&models[2]["id"], &models[2]["active"]), (&json!(model), &json!(true)));
    assert_eq!(models[2]["parent"], pretrained.as_str());
    assert_eq!(models[2]["eval"]["map_at_r"].as_f64(), Some(after));
    assert_eq!(models[0]["eval"]["map_at_r"].as_f64(), Some(before));
    let (_, dataset) = client.get("/datasets/fashion").await;
    assert_eq!(dataset["model"], model.as_str());

    // Searches now embed with the new model, and still find the right things.
    let mut hits = 0;
    for (label, image) in &subset.queries {
        let (status, body) = client.search_raw("fashion", image.clone(), "&k=1").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], model.as_str());
        hits += usize::from(body["results"][0]["label"] == label.as_str());
    }
    let recall_at_1 = hits as f64 / subset.queries.len() as f64;
    println!("Recall@1 of the 200 test queries with the fine-tuned model: {recall_at_1:.3}");
    assert!(recall_at_1 >= 0.70, "{recall_at_1}");
    let (_, ranked) = search(&client, "fashion", query).await;

    // The active generation survives a restart.
    server.stop().await.expect("stop");
    let (server, client) = support::start(support::settings(data.path())).await;
    assert_eq!(search(&client, "fashion", query).await, (model.clone(), ranked));

    // Rolling back to the pretrained model goes through a reindex job.
    let (status, reindex) =
        post_json(&client, &format!("/datasets/fashion/models/{pretrained}/activate"), json!({})).await;
    assert_eq!(status, 202, "{reindex}");
    assert_eq!(reindex["kind"], "reindex");
    let reindex = client.wait_job(reindex["id"].as_str().expect("id")).await;
    assert_eq!(reindex["status"], "succeeded", "{reindex}");
    assert_eq!(reindex["result"]["reused_index"], true, "the pretrained index was kept on disk");
    assert_eq!(search(&client, "fashion", query).await.0, pretrained);
    let (_, models) = client.get("/datasets/fashion/models").await;
    let active: Vec<&Value> = models["models"].as_array().unwrap().iter().filter(|m| m["active"] == true).collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["id"], pretrained.as_str());

    // Deleting the dataset removes its models, features and indexes with it.
    for dir in ["models/fashion", "features/fashion", "indexes/fashion"] {
        assert!(data.path().join(dir).exists(), "{dir} exists before the delete");
    }
    let response = client.http.delete(client.url("/datasets/fashion")).send().await.expect("DELETE");
    assert_eq!(response.status(), 204);
    for dir in ["models/fashion", "features/fashion", "indexes/fashion"] {
        assert!(!data.path().join(dir).exists(), "{dir} is gone after the delete");
    }
    server.stop().await.expect("stop");
}

/// The default job trains the last three blocks with the head and blends the pretrained
/// geometry in, and `if_better` decides by the held-out figures it reports. On the full
/// Fashion-MNIST the default holds Recall@5 (docs/EXPERIMENTS.md); on these 1,000 items (140
/// steps) it lowers it by one or two of the 100 held-out queries, at the edge of the noise
/// margin (0.94 → 0.92 promoted with the cosine rate, 0.94 → 0.87 refused with the constant
/// one), so the test checks that the decision and the served model follow the rule applied to
/// the reported figures, not which side of the margin they fall (the rule's own unit tests
/// build both sides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_finetune_trains_three_blocks_and_if_better_decides_by_the_held_out_figures() {
    let data = tempfile::tempdir().expect("tempdir");
    let subset = support::fashion_subset(100, 20);
    let (server, client) = support::start(support::settings(data.path())).await;
    support::ingest(&client, "fashion", subset.catalogue_zip.clone()).await;
    let pretrained = search(&client, "fashion", &subset.queries[0].1).await.0;
    let queued = finetune(&client, "fashion", json!({})).await;
    let defaults = (&queued["params"]["trainable_blocks"], &queued["params"]["pretrained_share"]);
    assert_eq!(defaults, (&json!(3), &json!(0.25)));
    let job = client.wait_job(queued["id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &job["result"];
    let metric = |which: &str, name: &str| result["eval"][which][name].as_f64().expect("metric");
    println!(
        "default: held-out MAP@R {:.4} -> {:.4}, Recall@1 {} -> {}, Recall@5 {} -> {}, Recall@10 {} -> {}; seconds {}",
        metric("before", "map_at_r"),
        metric("after", "map_at_r"),
        metric("before", "recall_at_1"),
        metric("after", "recall_at_1"),
        metric("before", "recall_at_5"),
        metric("after", "recall_at_5"),
        metric("before", "recall_at_10"),
        metric("after", "recall_at_10"),
        result["seconds"]
    );
    assert_eq!(result["training"]["trainable_blocks"], 3, "{result}");
    // The default time budget does not bind on 1,000 items: every step of the epochs runs.
    assert_eq!(result["training"]["max_training_seconds"], 450.0, "{result}");
    assert_eq!(result["training"]["steps"], result["training"]["planned_steps"], "{result}");
    let gain = metric("after", "map_at_r") / metric("before", "map_at_r") - 1.0;
    assert!(gain >= MIN_RELATIVE_MAP_GAIN, "{result}");
    assert!(metric("after", "recall_at_1") > metric("before", "recall_at_1"), "{result}");
    // The rule by hand: a recall may fall by its noise margin, the larger of the default
    // `recall_tolerance` and the active model's standard error over the held-out queries.
    let queries = result["eval"]["queries"].as_f64().expect("queries");
    let margin = |p: f64| (p * (1.0 - p) / queries).sqrt().max(RECALL_TOLERANCE);
    let fell = |name: &str| metric("after", name) < metric("before", name) - margin(metric("before", name));
    let rule = if fell("recall_at_1") {
        "recall1_fell"
    } else if fell("recall_at_5") {
        "recall5_fell"
    } else {
        "better"
    };
    assert_eq!((&result["promoted"], &result["rule"]), (&json!(rule == "better"), &json!(rule)), "{result}");
    let (_, models) = client.get("/datasets/fashion/models").await;
    let active: Vec<&Value> = models["models"].as_array().unwrap().iter().filter(|m| m["active"] == true).collect();
    assert_eq!(active.len(), 1, "{models}");
    if rule == "better" {
        assert_eq!(active[0]["id"], result["model"], "the new model serves: {models}");
    } else {
        assert_eq!(active[0]["id"], result["parent"], "the pretrained model serves on: {models}");
        assert_eq!(search(&client, "fashion", &subset.queries[0].1).await.0, pretrained, "same answers as before");
    }
    server.stop().await.expect("stop");
}

/// Six clients search without pause while a finetune job promotes its model (one that trained
/// the backbone's last block, so the swap also changes what the embedder gives a query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_switch_models_once_without_a_failure() {
    const CLIENTS: usize = 6;
    let data = tempfile::tempdir().expect("tempdir");
    let subset = support::fashion_subset(40, 2);
    let (server, client) = support::start(support::settings(data.path())).await;
    support::ingest(&client, "swap", subset.catalogue_zip.clone()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (client, stop) = (client.clone(), stop.clone());
        let image = subset.queries[c % subset.queries.len()].1.clone();
        clients.push(tokio::spawn(async move {
            let (mut seen, mut failures) = (Vec::<String>::new(), Vec::new());
            while !stop.load(Ordering::SeqCst) {
                let (status, body) = client.search_raw("swap", image.clone(), "&k=5").await;
                if status != 200 || body["results"].as_array().map(Vec::len) != Some(5) {
                    failures.push(format!("{status} {body}"));
                    continue;
                }
                seen.push(body["model"].as_str().unwrap_or_default().to_owned());
            }
            (seen, failures)
        }));
    }
    // The new model trains the last block too: in-flight searches of the old generation embed the
    // pooled features, those of the new one the activations entering block 15.
    let job = finetune(&client, "swap", json!({"promote": "always", "epochs": 5, "trainable_blocks": 1})).await;
    let job = client.wait_job(job["id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model = job["result"]["model"].as_str().expect("model").to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);

    for handle in clients {
        let (seen, failures) = handle.await.expect("client task");
        assert!(failures.is_empty(), "failed searches: {failures:?}");
        let switches = seen.windows(2).filter(|w| w[0] != w[1]).count();
        println!("client saw {} searches, {} model switches", seen.len(), switches);
        assert_eq!(switches, 1, "exactly one switch, never back: {:?}", dedup(&seen));
        assert_eq!(seen.last(), Some(&model));
        assert_ne!(seen.first(), Some(&model));
    }
    server.stop().await.expect("stop");
}

/// The answers (model, ranked ids) of the first `n` queries.
async fn answers(client: &Client, dataset: &str, queries: &[(String, Vec<u8>)]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (_, image) in queries {
        out.push(search(client, dataset, image).await);
    }
    out
}

/// A model that trained the backbone's last two blocks with its head (on augmented images):
/// saved with its blocks,
/// served through the shared trunk, identical after a restart, after a rollback and a return,
/// and an item added while it serves is embedded by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_generation_survives_a_restart_and_a_rollback_with_identical_answers() {
    let data = tempfile::tempdir().expect("tempdir");
    let subset = support::fashion_subset(30, 1);
    let (server, client) = support::start(support::settings(data.path())).await;
    support::ingest(&client, "deep", subset.catalogue_zip.clone()).await;
    let queries = &subset.queries;
    let pretrained_answers = answers(&client, "deep", queries).await;
    let pretrained = pretrained_answers[0].0.clone();

    // Trained from the images, augmented: every step runs the frozen blocks on new crops.
    // Its embedding keeps a quarter of the pretrained geometry, through the embedder's own blocks.
    let params =
        json!({"promote": "always", "epochs": 3, "trainable_blocks": 2, "augment": true, "pretrained_share": 0.25});
    let job = finetune(&client, "deep", params).await;
    let job = client.wait_job(job["id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &job["result"];
    assert_eq!(result["training"]["trainable_blocks"], 2, "{result}");
    assert!(result["training"]["steps"].as_u64().expect("steps") > 0, "{result}");
    let model = result["model"].as_str().expect("model").to_owned();
    let model_dir = data.path().join("models/deep").join(&model);
    for file in ["head.safetensors", "tail.safetensors", "model.json"] {
        assert!(model_dir.join(file).is_file(), "{file} saved with the model");
    }
    let features = std::fs::read_dir(data.path().join("features/deep")).expect("feature caches");
    let caches: Vec<String> = features.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    assert!(caches.iter().any(|name| name.ends_with("-block14-v1.f32")), "block inputs cached: {caches:?}");

    let (_, models) = client.get("/datasets/deep/models").await;
    let listed = models["models"].as_array().expect("models").iter().find(|m| m["id"] == model.as_str()).cloned();
    assert_eq!(listed.expect("listed")["dim"], 128 + 1280, "{models}");
    let deep_answers = answers(&client, "deep", queries).await;
    assert!(deep_answers.iter().all(|(m, _)| *m == model), "{deep_answers:?}");
    let changed = deep_answers.iter().zip(&pretrained_answers).filter(|(d, p)| d.1 != p.1).count();
    assert!(changed > 0, "the trained blocks change some ranking");

    // A restart loads the saved head and blocks: the same answers.
    server.stop().await.expect("stop");
    let (server, client) = support::start(support::settings(data.path())).await;
    assert_eq!(answers(&client, "deep", queries).await, deep_answers, "after a restart");

    // A rollback to the pretrained model answers as it did, and a return to the deep one as it did.
    for (id, expected) in [(&pretrained, &pretrained_answers), (&model, &deep_answers)] {
        let (status, reindex) = post_json(&client, &format!("/datasets/deep/models/{id}/activate"), json!({})).await;
        assert_eq!(status, 202, "{reindex}");
        let reindex = client.wait_job(reindex["id"].as_str().expect("id")).await;
        assert_eq!(reindex["status"], "succeeded", "{reindex}");
        assert_eq!(&answers(&client, "deep", queries).await, expected, "after activating {id}");
    }

    // An item added while the deep model serves is embedded by it: its own image finds it first.
    let (label, image) = queries[3].clone();
    let form = reqwest::multipart::Form::new()
        .text("label", label)
        .text("item_id", "added-1")
        .part("image", reqwest::multipart::Part::bytes(image.clone()).file_name("x.png"));
    let response = client.http.post(client.url("/datasets/deep/items")).multipart(form).send().await.expect("post");
    assert_eq!(response.status(), 201);
    let (status, body) = client.search_raw("deep", image, "&k=1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((&body["model"], &body["results"][0]["item_id"]), (&json!(model), &json!("added-1")), "{body}");
    assert!(body["results"][0]["distance"].as_f64().expect("distance") < 1e-3, "{body}");
    server.stop().await.expect("stop");
}

fn dedup(seen: &[String]) -> Vec<&String> {
    let mut out: Vec<&String> = Vec::new();
    for id in seen {
        if out.last() != Some(&id) {
            out.push(id);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_finetune_requests_are_refused_and_a_canceled_job_changes_nothing() {
    let data = tempfile::tempdir().expect("tempdir");
    let subset = support::fashion_subset(10, 1);
    let (server, client) = support::start(support::settings(data.path())).await;
    support::ingest(&client, "small", subset.catalogue_zip.clone()).await;
    let (_, dataset) = client.get("/datasets/small").await;
    let pretrained = dataset["model"].clone();

    for (body, status, code) in [
        (json!({"kind": "finetune", "dataset": "nope"}), 404, "dataset_not_found"),
        (json!({"kind": "train", "dataset": "small"}), 400, "unsupported_job_kind"),
        (json!({"kind": "finetune", "dataset": "small", "params": {"mining": "hardest"}}), 400, "invalid_params"),
        (json!({"kind": "finetune", "dataset": "small", "params": {"holdout": 0.9}}), 400, "invalid_params"),
        (json!({"kind": "finetune", "dataset": "small", "params": {"epoch": 3}}), 400, "invalid_params"),
        (json!({"kind": "finetune", "dataset": "small", "params": {"trainable_blocks": 17}}), 400, "invalid_params"),
        (
            json!({"kind": "finetune", "dataset": "small", "params": {"trainable_blocks": "most"}}),
            400,
            "invalid_params",
        ),
        (
            json!({"kind": "finetune", "dataset": "small", "params": {"augment": true, "trainable_blocks": 0}}),
            400,
            "invalid_params",
        ),
        (
            json!({"kind": "finetune", "dataset": "small", "params": {"training_seconds_per_10k_items": 0}}),
            400,
            "invalid_params",
        ),
        (
            json!({"kind": "finetune", "dataset": "small", "params": {"training_seconds_per_10k_items": 1e9}}),
            400,
            "invalid_params",
        ),
        (json!({"kind": "reindex", "dataset": "small", "params": {}}), 400, "invalid_params"),
        (json!({"kind": "reindex", "dataset": "small", "params": {"model": "ft-none"}}), 404, "model_not_found"),
    ] {
        let (got, answer) = post_json(&client, "/jobs", body.clone()).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{body} -> {answer}");
    }
    let (got, answer) = post_json(&client, "/datasets/small/models/ft-none/activate", json!({})).await;
    assert_eq!((got, answer["error"]["code"].as_str()), (404, Some("model_not_found")), "{answer}");

    // A job long enough to be caught training, then canceled.
    let job = finetune(&client, "small", json!({"epochs": 10000})).await;
    let id = job["id"].as_str().expect("id").to_owned();
    let mut stage = Value::Null;
    for _ in 0..1200 {
        let (_, job) = client.get(&format!("/jobs/{id}")).await;
        if job["stage"] == "training" && job["detail"]["step"].as_u64().unwrap_or(0) > 0 {
            stage = job;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stage["stage"], "training", "the job reached training: {stage}");
    assert!(stage["detail"]["loss"].is_number(), "training reports its loss: {stage}");
    assert!(stage["detail"]["epochs"] == 10000, "{stage}");
    let (status, _) = post_json(&client, &format!("/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(status, 202);
    let job = client.wait_job(&id).await;
    assert_eq!(job["status"], "canceled", "{job}");
    let (_, models) = client.get("/datasets/small/models").await;
    assert_eq!(models["models"].as_array().map(Vec::len), Some(1), "{models}");
    let (_, dataset) = client.get("/datasets/small").await;
    assert_eq!(dataset["model"], pretrained);
    let (_, body) = client.search_raw("small", subset.queries[0].1.clone(), "&k=3").await;
    assert_eq!(body["model"], pretrained);

    // The same length of job under a time budget of 2 s: it trains what fits, then evaluates.
    let job =
        finetune(&client, "small", json!({"epochs": 10000, "training_seconds_per_10k_items": 2, "promote": "never"}))
            .await;
    let job = client.wait_job(job["id"].as_str().expect("id")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let training = &job["result"]["training"];
    let (steps, planned) =
        (training["steps"].as_u64().expect("steps"), training["planned_steps"].as_u64().expect("planned"));
    assert!(steps > 0 && steps < planned / 100, "{steps} of {planned} steps in 2 s: {training}");
    assert_eq!(training["max_training_seconds"], 2.0, "{training}");
    assert!(job["result"]["seconds"]["training"].as_f64().expect("seconds") < 30.0, "{job}");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finetune_job_interrupted_by_a_stop_is_resumed() {
    let data = tempfile::tempdir().expect("tempdir");
    let subset = support::fashion_subset(20, 1);
    let settings = support::settings(data.path());
    let (server, client) = support::start(settings.clone()).await;
    support::ingest(&client, "resume", subset.catalogue_zip.clone()).await;
    server.stop().await.expect("stop");
    {
        // What a process killed during a finetune job leaves behind.
        let db = Db::open(&settings.database_url()).await.expect("db");
        db.insert_job("ft-job-1", JobKind::Finetune, "resume", &json!({"epochs": 2, "promote": "always"}))
            .await
            .expect("job");
        let job = db.start_next_job(&settings.instance()).await.expect("start").expect("a queued job");
        assert_eq!((job.status.as_str(), job.attempts), ("running", 1));
        db.close().await;
    }
    let (server, client) = support::start(settings).await;
    let job = client.wait_job("ft-job-1").await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let (_, dataset) = client.get("/datasets/resume").await;
    assert_eq!(dataset["model"], job["result"]["model"]);
    server.stop().await.expect("stop");
}

/// A lost index is rebuilt at start from the feature cache (ingest wrote it), with the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_index_is_rebuilt_at_start_from_the_feature_cache() {
    let data = tempfile::tempdir().expect("tempdir");
    let subset = support::fashion_subset(10, 1);
    let settings = support::settings(data.path());
    let (server, client) = support::start(settings.clone()).await;
    support::ingest(&client, "lost", subset.catalogue_zip.clone()).await;
    let query = &subset.queries[0].1;
    let before = search(&client, "lost", query).await;
    server.stop().await.expect("stop");

    std::fs::remove_dir_all(data.path().join("indexes/lost")).expect("remove the index");
    let (server, client) = support::start(settings).await;
    assert_eq!(search(&client, "lost", query).await, before);
    assert!(data.path().join("indexes/lost").exists(), "the rebuilt index was saved");
    server.stop().await.expect("stop");
}
