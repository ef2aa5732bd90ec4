//! A bounded log of what happened recently: nodes connecting and going, protocol errors,
//! refused handshakes, configuration changes, failovers. The admin shows it and serves it
//! as JSON; the oldest events fall off once it is full.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Events kept, at most.
pub const EVENTS_KEPT: usize = 1000;

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The normal course of things.
    Info,
    /// Something an operator may want to look at.
    Warning,
    /// Something failed.
    Error,
}

impl Level {
    /// The level's name, as the API and pages show it.
    pub fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its number: events are numbered from 1 in the order they happened.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// How much it matters.
    pub level: Level,
    /// What kind of event (`node_connected`, `protocol_error`, `change`, ...).
    pub kind: &'static str,
    /// What it happened to (`<pan>/<node>`, `<pan>`, `ring`).
    pub subject: String,
    /// What happened, for a person.
    pub message: String,
}

/// The log. Any thread records; readers take copies.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Inner>,
    keep: usize,
}

#[derive(Debug, Default)]
struct Inner {
    last: u64,
    events: VecDeque<Event>,
}

impl Default for EventLog {
    fn default() -> EventLog {
        EventLog::new(EVENTS_KEPT)
    }
}

impl EventLog {
    /// A log keeping the last `keep` events.
    pub fn new(keep: usize) -> EventLog {
        EventLog { inner: Mutex::default(), keep: keep.max(1) }
    }

    /// Records an event now.
    pub fn record(&self, level: Level, kind: &'static str, subject: impl Into<String>, message: impl Into<String>) {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.last += 1;
        let seq = inner.last;
        inner.events.push_back(Event { seq, unix_ms, level, kind, subject: subject.into(), message: message.into() });
        while inner.events.len() > self.keep {
            inner.events.pop_front();
        }
    }

    /// The events numbered after `after`, oldest first, at most `limit` of them (the
    /// newest ones when there are more).
    pub fn since(&self, after: u64, limit: usize) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let newer = inner.events.iter().filter(|e| e.seq > after).count();
        inner.events.iter().filter(|e| e.seq > after).skip(newer.saturating_sub(limit)).cloned().collect()
    }

    /// The number of the latest event (0 before any).
    pub fn last(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_events_numbered_in_order() {
        let log = EventLog::new(3);
        for i in 0..5 {
            log.record(Level::Info, "node_connected", format!("p/n{i}"), "queue pair opened");
        }
        let all = log.since(0, 100);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5], "the oldest fell off");
        assert_eq!(all[0].subject, "p/n2");
        assert_eq!(log.since(4, 100).len(), 1);
        assert_eq!(log.since(0, 2).iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5], "the newest within the limit");
        assert_eq!(log.last(), 5);
        assert!(all.iter().all(|e| e.unix_ms > 1_700_000_000_000));
    }
}
