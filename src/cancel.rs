//! The cancel flag of a running job: set by `POST /jobs/{id}/cancel` (or a dataset's deletion),
//! read by the job between its steps. Cloning shares the flag; it is an atomic, so any thread
//! may set or read it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::JobFailure;

#[derive(Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_canceled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Canceled)` once the flag is set: `cancel.check()?` between steps.
    pub fn check(&self) -> Result<(), JobFailure> {
        if self.is_canceled() { Err(JobFailure::Canceled) } else { Ok(()) }
    }
}
