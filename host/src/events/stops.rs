//! The broker engines' running subscriptions, each a task with a stop signal, by module:
//! what `unsubscribe_module` and `retire_module` act on.

use std::sync::Mutex;

use tokio::sync::watch;

struct Running {
    module: String,
    stop: watch::Sender<bool>,
}

/// Stop signals of the running subscriptions, oldest first.
#[derive(Default)]
pub struct Stops {
    running: Mutex<Vec<Running>>,
}

impl Stops {
    /// Registers a new subscription of `module`; its task watches the receiver.
    pub fn add(&self, module: &str) -> watch::Receiver<bool> {
        let (stop, stopped) = watch::channel(false);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Running {
                module: module.to_string(),
                stop,
            });
        stopped
    }

    /// Stops every subscription of `module`.
    pub fn stop_module(&self, module: &str) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for r in running.iter().filter(|r| r.module == module) {
            let _ = r.stop.send(true);
        }
        running.retain(|r| r.module != module);
    }

    /// Stops every subscription (the host is shutting down).
    pub fn stop_all(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for r in running.drain(..) {
            let _ = r.stop.send(true);
        }
    }

    /// Stops all but the `keep_newest` most recent subscriptions of `module` (hot
    /// reload); a stopped one finishes the event in hand.
    pub fn retire(&self, module: &str, keep_newest: usize) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let stop = |r: Running| {
            let _ = r.stop.send(true);
        };
        super::retire_oldest(&mut running, module, keep_newest, |r| &r.module, stop);
    }
}
