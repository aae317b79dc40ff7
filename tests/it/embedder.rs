//! The batching queue in front of the real model: concurrent queries share
//! forward passes and get exactly what they would get alone; a full queue
//! refuses at once.

use lookalike::embedder::{EmbedError, Embedder, EmbedderSettings};
use lookalike::network::EmbeddingModel;

use super::support;

fn model() -> EmbeddingModel {
    EmbeddingModel::load(support::weights(), support::TEST_INPUT_SIZE, &candle_core::Device::Cpu).expect("model")
}

fn inputs(n: usize) -> Vec<Vec<f32>> {
    let queries = support::fashion_subset(1, n.div_ceil(10)).queries;
    queries
        .iter()
        .take(n)
        .map(|(_, png)| {
            lookalike::network::preprocess::prepare(png, 1 << 24, support::TEST_INPUT_SIZE).expect("prepare").input
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_queries_are_batched_and_unchanged() {
    let settings =
        EmbedderSettings { max_batch: 16, max_wait_ms: 50, queue_capacity: 64, max_forward_pixels: usize::MAX };
    let embedder = Embedder::start(model(), settings).expect("start");
    let inputs = inputs(16);
    let alone: Vec<Vec<f32>> = {
        let mut out = Vec::new();
        for input in &inputs {
            out.push(embedder.embed_one(input.clone()).await.expect("alone"));
        }
        out
    };
    let batches_before = embedder.stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    let together = futures_util::future::join_all(inputs.iter().map(|i| embedder.embed_one(i.clone()))).await;
    let batches = embedder.stats.batches.load(std::sync::atomic::Ordering::Relaxed) - batches_before;
    assert!(batches < 16, "16 concurrent queries ran in {batches} forward passes: no batching");
    for (a, b) in alone.iter().zip(together) {
        let b = b.expect("together");
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "batched embedding differs by {diff}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let settings = EmbedderSettings { max_batch: 1, max_wait_ms: 0, queue_capacity: 1, max_forward_pixels: usize::MAX };
    let embedder = Embedder::start(model(), settings).expect("start");
    let input = inputs(1).remove(0);
    let results = futures_util::future::join_all((0..64).map(|_| embedder.embed_one(input.clone()))).await;
    let refused = results.iter().filter(|r| matches!(r, Err(EmbedError::Overloaded))).count();
    let answered = results.iter().filter(|r| r.is_ok()).count();
    assert!(refused > 0, "64 simultaneous queries into a queue of 1 were all accepted");
    assert!(answered > 0, "none answered");
    assert_eq!(refused + answered, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_seen_before_decoding() {
    use std::sync::atomic::Ordering;
    let settings = EmbedderSettings { max_batch: 1, max_wait_ms: 0, queue_capacity: 2, max_forward_pixels: usize::MAX };
    let embedder = Embedder::start(model(), settings).expect("start");
    assert!(embedder.check_room().is_ok(), "an empty queue has room");
    // Two requests waiting fill a queue of two.
    embedder.stats.queued.fetch_add(2, Ordering::Relaxed);
    assert!(matches!(embedder.check_room(), Err(EmbedError::Overloaded)));
    assert_eq!(embedder.stats.rejected.load(Ordering::Relaxed), 1, "an early refusal is counted as rejected");
    embedder.stats.queued.fetch_sub(1, Ordering::Relaxed);
    assert!(embedder.check_room().is_ok(), "room again once one has left");
    embedder.stats.queued.fetch_sub(1, Ordering::Relaxed);
    let input = inputs(1).remove(0);
    assert!(embedder.embed_one(input).await.is_ok());
}
