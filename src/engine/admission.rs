//! Admission control: at most `slots + max_queue` requests exist at a time,
//! so memory does not grow with offered load. One [`Bound`] per server (the
//! multi-engine router's, over all engines) or per engine used on its own;
//! it counts the requests it admitted and refused. This is control state, not
//! a metric; `/metrics` reads it through [`super::Engine::waiting`] and the
//! rejected count.
//!
//! An admitted request carries an [`Admission`], an opaque ticket: its place
//! in the bound that admitted it, its place among the requests of the engine
//! that runs it (the load the router balances), and its submission time. Both
//! places are given back when the request ends.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::EngineError;

/// Requests admitted and not yet ended (waiting + running), the queue bound
/// and the requests refused.
#[derive(Debug)]
pub struct Bound {
    in_flight: AtomicUsize,
    max_queue: usize,
    rejected: AtomicU64,
}

impl Bound {
    /// A bound that admits `slots + max_queue` requests (`slots` given per call).
    pub fn new(max_queue: usize) -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            max_queue,
            rejected: AtomicU64::new(0),
        })
    }

    /// Requests admitted and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests refused because `slots + max_queue` were in flight.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Admits one request when fewer than `slots + max_queue` are in flight
    /// (else counts the refusal); the place is given back when the ticket
    /// drops.
    pub fn admit(self: &Arc<Self>, slots: usize) -> Result<Admission, EngineError> {
        let capacity = slots + self.max_queue;
        let mut cur = self.in_flight.load(Ordering::Acquire);
        loop {
            if cur >= capacity {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(EngineError::QueueFull {
                    max_queue: self.max_queue,
                });
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Admission {
                        place: Place(Arc::clone(self)),
                        engine: None,
                        submitted: Instant::now(),
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Counts one request whatever the count (an engine's load, for a
    /// request another bound admitted).
    fn enter(self: &Arc<Self>) -> Place {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Place(Arc::clone(self))
    }
}

/// One request counted in a [`Bound`] until dropped.
#[derive(Debug)]
struct Place(Arc<Bound>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place among the requests the server (or an engine on its own) holds,
/// from [`Bound::admit`] ([`super::Engine::admit`], the router's admit).
/// Counts against the bound until dropped: it travels with the request to the
/// engine thread and ends with it. Its time is the request's submission
/// time: queue time, TTFT and the deadline include validation.
pub struct Admission {
    place: Place,
    /// The request's place in the engine that runs it, when that is not the
    /// bound that admitted it.
    engine: Option<Place>,
    submitted: Instant,
}

impl Admission {
    /// When the request was admitted.
    pub(super) fn submitted(&self) -> Instant {
        self.submitted
    }

    /// The ticket, counted in `engine` too (once).
    pub(super) fn counted_in(mut self, engine: &Arc<Bound>) -> Self {
        if !Arc::ptr_eq(&self.place.0, engine) && self.engine.is_none() {
            self.engine = Some(engine.enter());
        }
        self
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admission")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_slots_plus_queue_and_frees_on_drop() {
        let a = Bound::new(2);
        let t: Vec<Admission> = (0..3).map(|_| a.admit(1).expect("room")).collect();
        assert_eq!(a.in_flight(), 3);
        assert_eq!(
            a.admit(1).unwrap_err(),
            EngineError::QueueFull { max_queue: 2 }
        );
        assert_eq!(a.rejected(), 1);
        drop(t);
        assert_eq!(a.in_flight(), 0);
        assert!(a.admit(1).is_ok());
    }

    #[test]
    fn a_ticket_counts_once_in_the_engine_that_runs_it() {
        let server = Bound::new(0);
        let engine = Bound::new(0);
        let t = server.admit(1).expect("room").counted_in(&engine);
        let t = t.counted_in(&engine);
        assert_eq!((server.in_flight(), engine.in_flight()), (1, 1));
        // A ticket of the engine's own bound is counted there already.
        let own = engine.admit(2).expect("room").counted_in(&engine);
        assert_eq!(engine.in_flight(), 2);
        drop((t, own));
        assert_eq!((server.in_flight(), engine.in_flight()), (0, 0));
    }
}
