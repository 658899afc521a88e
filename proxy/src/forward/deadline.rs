//! Deadlines: a route's timeout and a retry's per-try timeout, as instants.

use std::time::{Duration, Instant};

/// The time left until `deadline` (zero once it has passed); `None` without a deadline.
pub(crate) fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// The earlier of two optional deadlines.
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earlier_deadline_wins() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        assert_eq!(earliest(Some(now), Some(later)), Some(now));
        assert_eq!(earliest(Some(later), Some(now)), Some(now));
        assert_eq!(earliest(None, Some(later)), Some(later));
        assert_eq!(earliest(Some(now), None), Some(now));
        assert_eq!(earliest(None, None), None);
    }

    #[test]
    fn a_past_deadline_leaves_nothing() {
        assert_eq!(remaining(None), None);
        let past = Instant::now().checked_sub(Duration::from_secs(1));
        if let Some(past) = past {
            assert_eq!(remaining(Some(past)), Some(Duration::ZERO));
        }
        let left = remaining(Some(Instant::now() + Duration::from_secs(60))).unwrap();
        assert!(left > Duration::from_secs(30) && left <= Duration::from_secs(60));
    }
}
