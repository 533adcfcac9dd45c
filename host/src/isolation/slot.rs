//! [`WorkerSlot`]: which worker currently runs a module. Event deliveries go through it,
//! not to a fixed worker, so that what was queued for a worker that crashed (or was
//! replaced by a reload) reaches the next one instead of failing against the old one.

use std::{sync::Arc, time::Duration};

use crate::isolation::link::WorkerLink;

/// The current worker of one module, across restarts and reloads.
#[derive(Default)]
pub struct WorkerSlot {
    current: tokio::sync::watch::Sender<Option<Arc<WorkerLink>>>,
}

impl WorkerSlot {
    /// Makes `link` the module's worker (its instance went live).
    pub fn set(&self, link: Arc<WorkerLink>) {
        self.current.send_replace(Some(link));
    }

    /// The current worker once it is alive, waiting up to `deadline` for a restart.
    pub async fn live(&self, deadline: Duration) -> Option<Arc<WorkerLink>> {
        let mut rx = self.current.subscribe();
        let wait = async move {
            rx.wait_for(|l| l.as_ref().is_some_and(|l| l.is_alive()))
                .await
                .ok()
                .and_then(|l| l.clone())
        };
        tokio::time::timeout(deadline, wait).await.ok().flatten()
    }
}
