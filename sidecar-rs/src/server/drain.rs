//! Shutdown as two stages a call can observe.
//!
//! 1. **Draining** ([`Drain::start`]): health turns NOT_SERVING, new calls get
//!    DRAINING, calls in flight run to completion, and each Dispatch stream
//!    ends once its last call has answered.
//! 2. **Abort** ([`Drain::abort`]): the drain timeout passed; every call still
//!    in flight is cancelled (its upstream request dropped) and answered
//!    CANCELLED, so even then no call goes without a result.

use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct Drain {
    draining: CancellationToken,
    abort: CancellationToken,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn start(&self) {
        self.draining.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Resolves once draining has started.
    pub async fn draining(&self) {
        self.draining.cancelled().await;
    }

    pub fn abort(&self) {
        self.draining.cancel();
        self.abort.cancel();
    }

    /// A token for one stream or call: cancelled on abort, or earlier by its
    /// owner.
    pub fn child_token(&self) -> CancellationToken {
        self.abort.child_token()
    }
}
