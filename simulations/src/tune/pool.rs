//! Evaluating candidates on every core, with a progress bar on stderr.
//!
//! Each evaluation is a whole deterministic run, independent of the others; results are kept
//! by the candidate's index, so they do not depend on the number of threads or on which
//! finishes first.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Runs `f` over `items` on `jobs` threads (the calling one among them when `jobs` is 1);
/// returns the results in `items`' order. Each finished item ticks `progress`.
pub(crate) fn map<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    progress: &Progress,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        return items
            .iter()
            .map(|x| {
                let r = f(x);
                progress.tick();
                r
            })
            .collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(x) = items.get(i) else { break };
                let r = f(x);
                if let Ok(mut slots) = slots.lock() {
                    slots[i] = Some(r);
                }
                progress.tick();
            });
        }
    });
    slots
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

/// A progress bar of evaluations on stderr, drawn only when stderr is a terminal and at most
/// ten times a second.
pub struct Progress {
    label: String,
    on: bool,
    total: AtomicUsize,
    done: AtomicUsize,
    started: Instant,
    drawn: Mutex<Option<Instant>>,
}

impl Progress {
    /// A bar for `total` evaluations, shown when `show` and stderr is a terminal.
    pub fn new(label: &str, total: usize, show: bool) -> Self {
        Progress {
            label: label.to_owned(),
            on: show && std::io::stderr().is_terminal(),
            total: AtomicUsize::new(total.max(1)),
            done: AtomicUsize::new(0),
            started: Instant::now(),
            drawn: Mutex::new(None),
        }
    }

    /// One more evaluation done.
    pub fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.on {
            return;
        }
        let Ok(mut drawn) = self.drawn.lock() else {
            return;
        };
        let now = Instant::now();
        if drawn.is_some_and(|t| now - t < Duration::from_millis(100)) {
            return;
        }
        *drawn = Some(now);
        self.draw(done);
    }

    fn draw(&self, done: usize) {
        let total = self.total.load(Ordering::Relaxed).max(done);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = done as f64 / secs.max(1e-9);
        let eta = (total - done) as f64 / rate.max(1e-9);
        let filled = (done * 30 / total).min(30);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r{} [{:<30}] {done}/{total} evaluations, {rate:.2}/s, {:.0}s left ",
            self.label,
            "#".repeat(filled),
            eta
        );
        let _ = err.flush();
    }

    /// Evaluations done so far.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Seconds since the bar was made.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Ends the bar (the search stopped early, or finished).
    pub fn finish(&self) {
        if self.on {
            let done = self.done();
            self.total.store(done, Ordering::Relaxed);
            self.draw(done);
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_items_order_on_any_number_of_threads() {
        let items: Vec<u64> = (0..50).collect();
        let p = Progress::new("t", items.len(), false);
        let one = map(&items, 1, &p, |x| x * x);
        let three = map(&items, 3, &p, |x| x * x);
        assert_eq!(one, three);
        assert_eq!(one[7], 49);
        assert_eq!(p.done(), 100);
    }
}
