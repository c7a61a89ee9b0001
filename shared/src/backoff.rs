//! Exponential backoff for clients that reconnect to a pipeline that went away (a restart, a
//! network fault): pauses double from 100 ms up to 5 s, and one outage may last at most a given
//! time before the client gives up.

use std::time::{Duration, Instant};

/// Longest pause between reconnection attempts.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Exponential backoff over one outage, which may last at most `retry_for`.
#[derive(Debug)]
pub struct Backoff {
    retry_for: Duration,
    failing_since: Option<Instant>,
    delay: Duration,
}

impl Backoff {
    pub const FIRST_DELAY: Duration = Duration::from_millis(100);

    pub fn new(retry_for: Duration) -> Self {
        Backoff {
            retry_for,
            failing_since: None,
            delay: Self::FIRST_DELAY,
        }
    }

    /// How long one outage may last.
    pub fn retry_for(&self) -> Duration {
        self.retry_for
    }

    /// Starts over after the pipeline was back: a new outage gets the full budget.
    pub fn reset(&mut self) {
        *self = Backoff::new(self.retry_for);
    }

    /// The pause before the next attempt, or `None` once the outage has lasted `retry_for`.
    pub fn next_delay(&mut self) -> Option<Duration> {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.retry_for {
            return None;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(MAX_RETRY_DELAY);
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_stop_after_the_budget() {
        let mut backoff = Backoff::new(Duration::from_secs(60));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay().unwrap()).collect();
        assert_eq!(delays[0], Backoff::FIRST_DELAY);
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(*delays.last().unwrap(), MAX_RETRY_DELAY);
        assert!(Backoff::new(Duration::ZERO).next_delay().is_none());
        backoff.reset();
        assert_eq!(backoff.next_delay(), Some(Backoff::FIRST_DELAY));
    }
}
