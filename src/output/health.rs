//! Destination health: up, down or probing, from periodic connect probes and from what
//! writers report. Pure state; the control thread runs the probes and tells every shard
//! about each change, so all shards (and every node with the same config and the same
//! view of its destinations) route alike.

use serde::Serialize;

/// Where a destination stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Routed to.
    Up,
    /// Routed around (rings with `on_down = "reroute"`, any_of, failover) or queued for.
    Down,
    /// Was down, answered one probe; one more clean interval makes it up. Still routed
    /// around, so a flapping destination does not pull traffic back and forth.
    Probing,
}

impl State {
    /// Whether routing sends to it.
    pub fn is_up(self) -> bool {
        self == State::Up
    }
}

/// One interval's evidence about a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evidence {
    /// The connect probe succeeded (true for destinations that are not probed).
    pub probe_ok: bool,
    /// A writer failed to connect or write during the interval.
    pub writer_failed: bool,
}

/// The health of one destination.
#[derive(Debug, Clone, Serialize)]
pub struct Tracker {
    /// Current state.
    pub state: State,
    /// Consecutive failed intervals while up.
    pub failures: u32,
    /// Probes that failed, since start.
    pub probe_failures: u64,
    /// State changes, since start.
    pub state_changes: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    /// A destination is presumed up until it fails (as carbon-c-relay does).
    pub fn new() -> Tracker {
        Tracker {
            state: State::Up,
            failures: 0,
            probe_failures: 0,
            state_changes: 0,
        }
    }

    /// Takes one interval's evidence; returns the new state when it changed.
    /// `down_after` consecutive failed intervals take an up destination down; a down one
    /// needs two clean intervals in a row (down, probing, up) to come back.
    pub fn observe(&mut self, e: Evidence, down_after: u32) -> Option<State> {
        if !e.probe_ok {
            self.probe_failures += 1;
        }
        let ok = e.probe_ok && !e.writer_failed;
        let next = match (self.state, ok) {
            (State::Up, true) => {
                self.failures = 0;
                State::Up
            }
            (State::Up, false) => {
                self.failures += 1;
                if self.failures >= down_after {
                    State::Down
                } else {
                    State::Up
                }
            }
            (State::Down, true) => State::Probing,
            (State::Down, false) => State::Down,
            (State::Probing, true) => {
                self.failures = 0;
                State::Up
            }
            (State::Probing, false) => State::Down,
        };
        if next == self.state {
            return None;
        }
        self.state = next;
        self.state_changes += 1;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(probe_ok: bool, writer_failed: bool) -> Evidence {
        Evidence {
            probe_ok,
            writer_failed,
        }
    }

    #[test]
    fn down_after_consecutive_failures_and_back_through_probing() {
        let mut t = Tracker::new();
        assert_eq!(t.observe(ev(false, false), 3), None);
        assert_eq!(
            t.observe(ev(true, false), 3),
            None,
            "a success resets the count"
        );
        assert_eq!(t.observe(ev(false, false), 3), None);
        assert_eq!(
            t.observe(ev(true, true), 3),
            None,
            "writer failures count too"
        );
        assert_eq!(t.observe(ev(false, false), 3), Some(State::Down));
        assert_eq!(t.observe(ev(false, false), 3), None);
        assert_eq!(t.observe(ev(true, false), 3), Some(State::Probing));
        assert_eq!(t.observe(ev(false, false), 3), Some(State::Down));
        assert_eq!(t.observe(ev(true, false), 3), Some(State::Probing));
        assert_eq!(t.observe(ev(true, false), 3), Some(State::Up));
        assert_eq!((t.state_changes, t.probe_failures), (5, 5));
    }

    #[test]
    fn one_failure_is_enough_when_configured() {
        let mut t = Tracker::new();
        assert_eq!(t.observe(ev(false, false), 1), Some(State::Down));
    }
}
