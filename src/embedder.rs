//! The bounded queue in front of the model that batches concurrent requests.
//!
//! One dedicated thread owns the model. Requests arrive over a bounded
//! channel, each with a `oneshot` for its answer; the thread takes the first
//! waiting request, takes every other already waiting, and lets more join for
//! at most `max_wait` (up to `max_batch` images) but only while queries are
//! on their way ([`Embedder::announce`]): a lone query never waits for company
//! that is not coming. It runs the batch through the model in passes of at
//! most `max_forward_pixels` input pixels (on a CPU, a pass whose activations
//! outgrow the caches is slower per image) and answers each. Requests whose
//! client went away are skipped. A query that finds the queue full is refused
//! at once (`EmbedError::Overloaded`, answered 503) instead of waiting without
//! bound; bulk work from jobs (`embed_many_blocking`) waits for room instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::network::{Embedded, EmbeddingModel};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error("the model queue is full; retry shortly")]
    Overloaded,
    #[error("the embedder has stopped")]
    Stopped,
    #[error("model failure: {0}")]
    Model(String),
}

/// How queries are batched (the `[embedder]` settings; `config/default.toml` says what each trades).
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct EmbedderSettings {
    pub max_batch: usize,
    /// Longest a gathered batch waits for more queries (ms), only while others are on their way.
    pub max_wait_ms: u64,
    /// Requests waiting beyond this are refused at once (`overloaded`).
    pub queue_capacity: usize,
    /// Most input pixels (images × side²) in one forward pass; a larger batch
    /// runs in several passes, each of at least one image.
    pub max_forward_pixels: usize,
}

/// While gathering a batch, how often the thread looks whether queries are
/// still on their way.
const GATHER_POLL: Duration = Duration::from_micros(200);

type Reply = oneshot::Sender<Result<Answer, EmbedError>>;

struct Request {
    inputs: Vec<Vec<f32>>,
    /// Also keep the activations entering this block (a deep generation's tail reads them).
    boundary: Option<usize>,
    enqueued: Instant,
    reply: Reply,
}

/// A request's rows and where its time went.
struct Answer {
    rows: Vec<Embedded>,
    timing: EmbedTiming,
}

/// Where one request's time in the embedder went (read by `/metrics`).
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedTiming {
    /// From entering the queue to the start of its forward pass: waiting
    /// behind earlier passes and for others to join its batch.
    pub queued: Duration,
    /// The part of `queued` while its batch was being gathered (the model
    /// idle, waiting up to `max_wait` for more requests).
    pub gathering: Duration,
    /// The forward pass it was part of (shared by every image of the batch).
    pub forward: Duration,
    /// Images in that forward pass.
    pub batch_images: usize,
}

/// Counters read by `/metrics`.
#[derive(Debug, Default)]
pub struct EmbedderStats {
    pub queued: AtomicUsize,
    /// Queries announced and not yet in the queue (being read or decoded).
    pub arriving: AtomicUsize,
    pub batches: AtomicU64,
    /// Forward passes through the model (a batch takes one or more).
    pub passes: AtomicU64,
    pub images: AtomicU64,
    pub rejected: AtomicU64,
    pub forward_micros: AtomicU64,
}

/// A handle to the model thread; cheap to clone.
#[derive(Clone)]
pub struct Embedder {
    tx: SyncSender<Request>,
    capacity: usize,
    model: Arc<ModelInfo>,
    network: Arc<EmbeddingModel>,
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
        let network = Arc::new(model);
        let thread_network = network.clone();
        thread::Builder::new()
            .name("embedder".into())
            .spawn(move || run(&thread_network, rx, settings, &thread_stats))?;
        Ok(Self { tx, capacity: settings.queue_capacity.max(1), model: info, network, stats })
    }

    pub fn model(&self) -> &ModelInfo {
        &self.model
    }

    /// The loaded network itself (read-only: its weights seed a trainable tail).
    pub fn network(&self) -> &EmbeddingModel {
        &self.network
    }

    /// Refuses a query at once (`Overloaded`, counted as rejected) when the
    /// queue is already full, so a caller under overload answers before
    /// spending time decoding an image the queue would refuse anyway. Advisory:
    /// the queue still refuses what does not fit when the query arrives.
    pub fn check_room(&self) -> Result<(), EmbedError> {
        if self.stats.queued.load(Ordering::Relaxed) < self.capacity {
            return Ok(());
        }
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        Err(EmbedError::Overloaded)
    }

    /// Tells the embedder a query is on its way (its image being read and
    /// decoded), so a batch being gathered waits for it; the guard goes to
    /// [`Self::embed_one_timed`], which drops it once the query is queued.
    pub fn announce(&self) -> Arrival {
        self.stats.arriving.fetch_add(1, Ordering::Relaxed);
        Arrival(self.stats.clone())
    }

    /// Embeds one preprocessed image (a query): refused at once when the queue is full.
    pub async fn embed_one(&self, input: Vec<f32>) -> Result<Vec<f32>, EmbedError> {
        self.embed_one_timed(input, None, self.announce()).await.map(|(row, _)| row.features)
    }

    /// [`Self::embed_one`] for a query announced by `arrival`, with the activations entering
    /// block `boundary` when asked, also telling how long it queued and how long its forward
    /// pass took.
    pub async fn embed_one_timed(
        &self,
        input: Vec<f32>,
        boundary: Option<usize>,
        arrival: Arrival,
    ) -> Result<(Embedded, EmbedTiming), EmbedError> {
        let (reply, answer) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.try_send(Request { inputs: vec![input], boundary, enqueued: Instant::now(), reply });
        drop(arrival);
        match sent {
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
        let Answer { mut rows, timing } = answer.await.map_err(|_| EmbedError::Stopped)??;
        let row = rows.pop().ok_or_else(|| EmbedError::Model("no embedding returned".into()))?;
        Ok((row, timing))
    }

    /// Embeds many images for a job, waiting for room in the queue. Call it
    /// from a blocking thread, never from the async runtime.
    pub fn embed_many_blocking(&self, inputs: Vec<Vec<f32>>) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(self.embed_many_at_blocking(inputs, None)?.into_iter().map(|row| row.features).collect())
    }

    /// [`Self::embed_many_blocking`], with the activations entering block `boundary` when asked.
    pub fn embed_many_at_blocking(
        &self,
        inputs: Vec<Vec<f32>>,
        boundary: Option<usize>,
    ) -> Result<Vec<Embedded>, EmbedError> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Request { inputs, boundary, enqueued: Instant::now(), reply }).is_err() {
            self.stats.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(EmbedError::Stopped);
        }
        answer.blocking_recv().map_err(|_| EmbedError::Stopped)?.map(|answer| answer.rows)
    }
}

/// Marks a query on its way to the embedder (see [`Embedder::announce`]).
#[derive(Debug)]
pub struct Arrival(Arc<EmbedderStats>);

impl Drop for Arrival {
    fn drop(&mut self) {
        self.0.arriving.fetch_sub(1, Ordering::Relaxed);
    }
}

fn run(model: &EmbeddingModel, rx: mpsc::Receiver<Request>, settings: EmbedderSettings, stats: &EmbedderStats) {
    let side = model.input_size() as usize;
    let per_pass = (settings.max_forward_pixels / (side * side).max(1)).clamp(1, settings.max_batch.max(1));
    while let Ok(first) = rx.recv() {
        let gathering_since = Instant::now();
        let mut batch = vec![first];
        let mut images = batch[0].inputs.len();
        let deadline = gathering_since + Duration::from_millis(settings.max_wait_ms);
        while images < settings.max_batch {
            let request = match rx.try_recv() {
                Ok(request) => request,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() || stats.arriving.load(Ordering::Relaxed) == 0 {
                        break;
                    }
                    match rx.recv_timeout(left.min(GATHER_POLL)) {
                        Ok(request) => request,
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            images += request.inputs.len();
            batch.push(request);
        }
        stats.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        batch.retain(|request| !request.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        // Requests asking for different block activations (queries of generations that read
        // different blocks, during a swap) go through the model in separate passes.
        while let Some(boundary) = batch.first().map(|request| request.boundary) {
            let mut group: Vec<Request> = batch.extract_if(.., |r| r.boundary == boundary).collect();
            let started = Instant::now();
            let sizes: Vec<usize> = group.iter().map(|r| r.inputs.len()).collect();
            let inputs: Vec<Vec<f32>> = group.iter_mut().flat_map(|r| std::mem::take(&mut r.inputs)).collect();
            let result = embed_chunked(model, &inputs, boundary, per_pass);
            let forward = started.elapsed();
            stats.passes.fetch_add(inputs.len().div_ceil(per_pass) as u64, Ordering::Relaxed);
            stats.images.fetch_add(inputs.len() as u64, Ordering::Relaxed);
            stats.forward_micros.fetch_add(forward.as_micros() as u64, Ordering::Relaxed);
            reply_all(group, &sizes, result, gathering_since..started, forward);
        }
    }
}

fn embed_chunked(
    model: &EmbeddingModel,
    inputs: &[Vec<f32>],
    boundary: Option<usize>,
    chunk: usize,
) -> Result<Vec<Embedded>, EmbedError> {
    let mut out = Vec::with_capacity(inputs.len());
    for part in inputs.chunks(chunk.max(1)) {
        out.extend(model.embed_at(part, boundary).map_err(|e| EmbedError::Model(format!("{e:#}")))?);
    }
    Ok(out)
}

/// Hands each request its own rows of the batch's output, in order, with
/// its timing (`gathering`: from taking the batch's first request to the
/// start of its forward pass).
fn reply_all(
    batch: Vec<Request>,
    sizes: &[usize],
    result: Result<Vec<Embedded>, EmbedError>,
    gathering: std::ops::Range<Instant>,
    forward: Duration,
) {
    match result {
        Ok(rows) => {
            let batch_images = rows.len();
            let mut rows = rows.into_iter();
            for (request, &size) in batch.into_iter().zip(sizes) {
                let mine: Vec<Embedded> = rows.by_ref().take(size).collect();
                let queued = gathering.end.saturating_duration_since(request.enqueued);
                let joined = request.enqueued.max(gathering.start);
                let timing = EmbedTiming {
                    queued,
                    gathering: gathering.end.saturating_duration_since(joined),
                    forward,
                    batch_images,
                };
                let _ = request.reply.send(Ok(Answer { rows: mine, timing }));
            }
        }
        Err(err) => {
            for request in batch {
                let _ = request.reply.send(Err(err.clone()));
            }
        }
    }
}
