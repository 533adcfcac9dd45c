//! Bounds on what a flood of bad requests can write to the audit log: each field of an
//! entry is capped in length, and denied requests are written one by one only up to a
//! rate; beyond it they are counted and written as one summary entry per second.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{audit::Audit, Core};

/// Denied requests written one by one per window; the rest are summarised.
pub const DENIALS_PER_WINDOW: u32 = 20;
/// The window of [`DENIALS_PER_WINDOW`].
pub const WINDOW: Duration = Duration::from_secs(1);

/// Longest actor, target or detail kept in an entry, in bytes.
pub const MAX_FIELD: usize = 512;
/// Longest module, action or outcome kept, in bytes.
pub const MAX_NAME: usize = 64;

/// Counts denied-request entries in the current window.
#[derive(Debug)]
pub(super) struct DenialBudget {
    window_start: Instant,
    written: u32,
    suppressed: u64,
}

impl Default for DenialBudget {
    fn default() -> Self {
        Self {
            window_start: Instant::now(),
            written: 0,
            suppressed: 0,
        }
    }
}

/// What to do with one denial.
enum Verdict {
    Write,
    /// Counted; the first suppressed one of a window schedules the summary.
    Suppressed {
        first: bool,
        window_end: Instant,
    },
}

impl DenialBudget {
    fn admit(&mut self, now: Instant) -> Verdict {
        if now.duration_since(self.window_start) >= WINDOW && self.suppressed == 0 {
            self.window_start = now;
            self.written = 0;
        }
        if self.suppressed == 0 && self.written < DENIALS_PER_WINDOW {
            self.written += 1;
            return Verdict::Write;
        }
        self.suppressed += 1;
        Verdict::Suppressed {
            first: self.suppressed == 1,
            window_end: self.window_start + WINDOW,
        }
    }

    /// Ends the window: returns how many were suppressed in it.
    fn close(&mut self, now: Instant) -> u64 {
        let suppressed = std::mem::take(&mut self.suppressed);
        self.window_start = now;
        self.written = 0;
        suppressed
    }
}

/// `text` cut to at most `max` bytes at a character boundary, saying how much was cut.
pub(super) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes cut]", &text[..end], text.len() - end)
}

impl Audit {
    /// The entry with every field within the length caps.
    pub(super) fn clipped(&self) -> Audit {
        Audit {
            actor: clip(&self.actor, MAX_FIELD),
            module: clip(&self.module, MAX_NAME),
            action: clip(&self.action, MAX_NAME),
            target: clip(&self.target, MAX_FIELD),
            outcome: clip(&self.outcome, MAX_NAME),
            detail: clip(&self.detail, MAX_FIELD),
            time: self.time.as_deref().map(|t| clip(t, MAX_NAME)),
            record_id: self.record_id.as_deref().map(|r| clip(r, MAX_NAME)),
        }
    }
}

impl Core {
    /// Records a denied request, within the denial rate: past it, denials are counted,
    /// and one `request.denied` entry with outcome `suppressed` says how many were not
    /// written one by one when the window ends.
    pub async fn record_denial(&self, entry: Audit) {
        let verdict = self
            .denials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(Instant::now());
        match verdict {
            Verdict::Write => self.record(entry).await,
            Verdict::Suppressed { first: false, .. } => {}
            Verdict::Suppressed {
                first: true,
                window_end,
            } => {
                let (recorder, denials) = (self.recorder(), self.denials.clone());
                tokio::spawn(async move {
                    tokio::time::sleep_until(window_end.into()).await;
                    let count = denials
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .close(Instant::now());
                    let summary = Audit::new("system", "request.denied", "*")
                        .outcome("suppressed")
                        .detail(&format!(
                            "{count} more denied request(s) were not written one by one (at most {DENIALS_PER_WINDOW} per {WINDOW:?})"
                        ));
                    recorder.record(summary).await;
                });
            }
        }
    }
}

/// The budget shared by a core and its summary task.
pub(super) type SharedBudget = std::sync::Arc<Mutex<DenialBudget>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_keeps_short_text_and_cuts_at_a_char_boundary() {
        assert_eq!(clip("short", 10), "short");
        let cut = clip(&"é".repeat(10), 5);
        assert!(cut.starts_with("éé…"), "{cut}");
        assert!(cut.ends_with("[16 bytes cut]"), "{cut}");
    }

    fn filter(action: &str) -> crate::core::audit::AuditFilter {
        crate::core::audit::AuditFilter {
            action: Some(action.into()),
            limit: Some(1000),
            ..Default::default()
        }
    }

    /// A flood of denied requests writes a bounded number of rows, then one summary.
    #[tokio::test]
    async fn a_flood_of_denials_writes_a_window_and_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let core = crate::core::authz::tests::facade(dir.path()).await;
        for i in 0..100 {
            let entry =
                Audit::new("anonymous", "request.denied", &format!("GET /x/{i}")).outcome("denied");
            core.record_denial(entry).await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let rows = loop {
            let rows = core.audit_query(&filter("request.denied")).await.unwrap();
            if rows.iter().any(|r| r.outcome == "suppressed") || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let single = rows.iter().filter(|r| r.outcome == "denied").count();
        assert_eq!(single, DENIALS_PER_WINDOW as usize);
        let summaries: Vec<_> = rows.iter().filter(|r| r.outcome == "suppressed").collect();
        assert_eq!(summaries.len(), 1, "{rows:?}");
        let expected = format!("{} more denied", 100 - DENIALS_PER_WINDOW);
        assert!(
            summaries[0].detail.starts_with(&expected),
            "{:?}",
            summaries[0]
        );
    }

    /// Whatever a client sends as its email, the audit row stays short.
    #[tokio::test]
    async fn a_huge_login_email_is_clipped_in_the_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let core = crate::core::authz::tests::core(dir.path()).await;
        let email = format!("{}@example.com", "a".repeat(200_000));
        assert!(core.login(&email, "whatever").await.is_err());
        let rows = core.audit_query(&filter("auth.login")).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(
            rows[0].actor.len() <= MAX_FIELD + 32,
            "{}",
            rows[0].actor.len()
        );
        assert!(
            rows[0].target.len() <= MAX_FIELD + 32,
            "{}",
            rows[0].target.len()
        );
        assert!(
            rows[0].actor.ends_with("bytes cut]"),
            "{}",
            &rows[0].actor[500..]
        );
    }

    #[test]
    fn the_budget_writes_a_window_then_counts() {
        let mut budget = DenialBudget::default();
        let start = budget.window_start;
        let written = (0..100)
            .filter(|_| matches!(budget.admit(start), Verdict::Write))
            .count();
        assert_eq!(written, DENIALS_PER_WINDOW as usize);
        assert_eq!(
            budget.close(start + WINDOW),
            100 - u64::from(DENIALS_PER_WINDOW)
        );
        assert!(matches!(budget.admit(start + WINDOW), Verdict::Write));
    }
}
