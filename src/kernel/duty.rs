//! A duty cycle: something costly (kernel statistics, syscall timing) switched on for a
//! window in each period. Pure time arithmetic, so the schedule is unit-tested.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DutyCycle {
    on: Duration,
    period: Duration,
    is_on: bool,
    next_change: Instant,
    on_since: Option<Instant>,
    on_before: Duration,
}

impl DutyCycle {
    /// Starts off; the first window opens `period - on` from `now`, so start-up itself
    /// runs without the cost, and each window closes a period after the last.
    pub fn new(on: Duration, period: Duration, now: Instant) -> Self {
        DutyCycle {
            on,
            period,
            is_on: false,
            next_change: now + period.saturating_sub(on),
            on_since: None,
            on_before: Duration::ZERO,
        }
    }

    /// Advances to `now`; returns the new state when it changed.
    pub fn poll(&mut self, now: Instant) -> Option<bool> {
        if now < self.next_change {
            return None;
        }
        self.is_on = !self.is_on;
        if self.is_on {
            self.on_since = Some(now);
            self.next_change = now + self.on;
        } else {
            if let Some(since) = self.on_since.take() {
                self.on_before += now.saturating_duration_since(since);
            }
            self.next_change = now + self.period.saturating_sub(self.on);
        }
        Some(self.is_on)
    }

    pub fn is_on(&self) -> bool {
        self.is_on
    }

    pub fn next_change(&self) -> Instant {
        self.next_change
    }

    /// Total time spent on, up to `now`.
    pub fn on_for(&self, now: Instant) -> Duration {
        self.on_before
            + self
                .on_since
                .map(|since| now.saturating_duration_since(since))
                .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_end_of_each_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut duty = DutyCycle::new(s(5), s(60), t0);
        assert!(!duty.is_on());
        assert_eq!(duty.next_change(), t0 + s(55));
        assert_eq!(duty.poll(t0 + s(54)), None);
        assert_eq!(duty.poll(t0 + s(55)), Some(true));
        assert_eq!(duty.next_change(), t0 + s(60));
        assert_eq!(duty.on_for(t0 + s(57)), s(2));
        assert_eq!(duty.poll(t0 + s(60)), Some(false));
        assert_eq!(duty.next_change(), t0 + s(115));
        assert_eq!(duty.on_for(t0 + s(100)), s(5));
        assert_eq!(duty.poll(t0 + s(115)), Some(true));
        assert_eq!(duty.on_for(t0 + s(116)), s(6));
    }
}
