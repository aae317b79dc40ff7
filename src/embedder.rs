//! The bounded queue in front of the model that batches concurrent requests.
//!
//! One dedicated thread owns the model. Requests arrive over a bounded
//! channel, each with a `oneshot` for its answer; the thread takes the first
//! waiting request, lets others join for at most `max_wait` or until
//! `max_batch` images, runs one forward pass and answers each. Requests whose
//! client went away are skipped. A query that finds the queue full is refused
//! at once (`EmbedError::Overloaded`, answered 503) instead of waiting without
//! bound; bulk work from jobs (`embed_many_blocking`) waits for room instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::model::EmbeddingModel;

#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("the model queue is full; retry shortly")]
    Overloaded,
    #[error("the embedder has stopped")]
    Stopped,
    #[error("model failure: {0}")]
    Model(String),
}

#[derive(Debug, Clone, Copy)]
pub struct EmbedderSettings {
    pub max_batch: usize,
    pub max_wait: Duration,
    pub queue_capacity: usize,
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>;

struct Request {
    inputs: Vec<Vec<f32>>,
    reply: Reply,
}

/// Counters read by `/metrics`.
#[derive(Debug, Default)]
pub struct EmbedderStats {
    pub queued: AtomicUsize,
    pub batches: AtomicU64,
    pub images: AtomicU64,
    pub rejected: AtomicU64,
    pub forward_micros: AtomicU64,
}

/// A handle to the model thread; cheap to clone.
#[derive(Clone)]
pub struct Embedder {
    tx: SyncSender<Request>,
    model: Arc<ModelInfo>,
    pub stats: Arc<EmbedderStats>,
}

/// What callers may know of the model without touching it.
#[derive(Debug)]
pub struct ModelInfo {
    pub id: String,
    pub dim: usize,
    pub input_size: u32,
}

impl Embedder {
    /// Moves `model` onto its own thread and returns the handle.
    pub fn start(model: EmbeddingModel, settings: EmbedderSettings) -> anyhow::Result<Self> {
        let info = Arc::new(ModelInfo { id: model.id().to_owned(), dim: model.dim(), input_size: model.input_size() });
        let (tx, rx) = mpsc::sync_channel::<Request>(settings.queue_capacity.max(1));
        let stats = Arc::new(EmbedderStats::default());
        let thread_stats = stats.clone();
        thread::Builder::new().name("embedder".into()).spawn(move || run(model, rx, settings, &thread_stats))?;
        Ok(Self { tx, model: info, stats })
    }

    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// Embeds one preprocessed image (a query): refused at once when the queue is full.
    pub async fn embed_one(&self, input: Vec<f32>) -> Result<Vec<f32>, EmbedError> {
        let (reply, answer) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Request { inputs: vec![input], reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(EmbedError::Overloaded);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(EmbedError::Stopped);
            }
        }
        let mut rows = answer.await.map_err(|_| EmbedError::Stopped)??;
        rows.pop().ok_or_else(|| EmbedError::Model("no embedding returned".into()))
    }

    /// Embeds many images for a job, waiting for room in the queue. Call it
    /// from a blocking thread, never from the async runtime.
    pub fn embed_many_blocking(&self, inputs: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, EmbedError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Request { inputs, reply }).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(EmbedError::Stopped);
        }
        answer.blocking_recv().map_err(|_| EmbedError::Stopped)?
    }
}

fn run(model: EmbeddingModel, rx: mpsc::Receiver<Request>, settings: EmbedderSettings, stats: &EmbedderStats) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let mut images = batch[0].inputs.len();
        let deadline = Instant::now() + settings.max_wait;
        while images < settings.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(request) => {
                    images += request.inputs.len();
                    batch.push(request);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        stats.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        batch.retain(|request| !request.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let sizes: Vec<usize> = batch.iter().map(|r| r.inputs.len()).collect();
        let inputs: Vec<Vec<f32>> = batch.iter_mut().flat_map(|r| std::mem::take(&mut r.inputs)).collect();
        let result = embed_chunked(&model, &inputs, settings.max_batch);
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.images.fetch_add(inputs.len() as u64, Ordering::Relaxed);
        stats.forward_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        reply_all(batch, &sizes, result);
    }
}

fn embed_chunked(model: &EmbeddingModel, inputs: &[Vec<f32>], chunk: usize) -> Result<Vec<Vec<f32>>, EmbedError> {
    let mut out = Vec::with_capacity(inputs.len());
    for part in inputs.chunks(chunk.max(1)) {
        out.extend(model.embed(part).map_err(|e| EmbedError::Model(format!("{e:#}")))?);
    }
    Ok(out)
}

/// Hands each request its own rows of the batch's output, in order.
fn reply_all(batch: Vec<Request>, sizes: &[usize], result: Result<Vec<Vec<f32>>, EmbedError>) {
    match result {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for (request, &size) in batch.into_iter().zip(sizes) {
                let mine: Vec<Vec<f32>> = rows.by_ref().take(size).collect();
                let _ = request.reply.send(Ok(mine));
            }
        }
        Err(err) => {
            for request in batch {
                let _ = request.reply.send(Err(err.clone()));
            }
        }
    }
}
