//! The dead letters a host shows in `/admin/dead-letters`: a bounded list, oldest
//! dropped first. The in-process engine keeps its own here; the broker engines keep
//! here what they read back from the broker's dead-letter stream or topics.

use std::{collections::VecDeque, sync::Mutex};

use super::DeadLetter;

/// Dead letters kept (oldest dropped first).
pub const MAX_DEAD_LETTERS: usize = 10_000;

/// A bounded list of dead letters.
#[derive(Default)]
pub struct DeadLetterList {
    list: Mutex<VecDeque<DeadLetter>>,
}

impl DeadLetterList {
    /// Adds one, dropping the oldest beyond [`MAX_DEAD_LETTERS`].
    pub fn push(&self, letter: DeadLetter) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() >= MAX_DEAD_LETTERS {
            list.pop_front();
        }
        list.push_back(letter);
    }

    /// Forgets them all (a reader about to read the broker's list again).
    pub fn clear(&self) {
        self.list.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// All of them, oldest first.
    pub fn all(&self) -> Vec<DeadLetter> {
        let list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().cloned().collect()
    }
}
