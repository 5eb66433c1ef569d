//! Admission control: at most `slots + max_queue` requests exist at a time,
//! so memory does not grow with offered load. This is control state, not a
//! metric; `/metrics` reads it through [`super::Engine::waiting`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::EngineError;

/// Requests admitted and not yet ended (waiting + running), and the bound.
#[derive(Debug)]
pub(super) struct Admission {
    admitted: AtomicUsize,
    max_queue: usize,
}

impl Admission {
    pub(super) fn new(max_queue: usize) -> Self {
        Self {
            admitted: AtomicUsize::new(0),
            max_queue,
        }
    }

    /// Requests admitted and not yet ended.
    pub(super) fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Admits one request when fewer than `slots + max_queue` are in flight;
    /// the ticket releases its place when dropped.
    pub(super) fn admit(self: &Arc<Self>, slots: usize) -> Result<Ticket, EngineError> {
        let capacity = slots + self.max_queue;
        let mut cur = self.admitted.load(Ordering::Acquire);
        loop {
            if cur >= capacity {
                return Err(EngineError::QueueFull {
                    max_queue: self.max_queue,
                });
            }
            match self.admitted.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Ticket(Arc::clone(self), None)),
                Err(now) => cur = now,
            }
        }
    }

    /// Admits one request whatever the count, for a caller that bounds
    /// admission itself (the multi-engine router); `hold` is dropped with the
    /// ticket, when the request ends.
    pub(super) fn admit_unbounded(self: &Arc<Self>, hold: Box<dyn Send>) -> Ticket {
        self.admitted.fetch_add(1, Ordering::AcqRel);
        Ticket(Arc::clone(self), Some(hold))
    }
}

/// Counts a request against the admission bound until dropped, with what
/// the caller asked to be dropped at the same time.
pub(super) struct Ticket(Arc<Admission>, #[allow(dead_code)] Option<Box<dyn Send>>);

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket")
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_slots_plus_queue_and_frees_on_drop() {
        let a = Arc::new(Admission::new(2));
        let t: Vec<Ticket> = (0..3).map(|_| a.admit(1).expect("room")).collect();
        assert_eq!(a.in_flight(), 3);
        assert_eq!(
            a.admit(1).unwrap_err(),
            EngineError::QueueFull { max_queue: 2 }
        );
        drop(t);
        assert_eq!(a.in_flight(), 0);
        assert!(a.admit(1).is_ok());
    }
}
