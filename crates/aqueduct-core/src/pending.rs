//! The tasks one client process has in flight: their keys, what waits for
//! each (a future, for the binding) and their deadlines.
//!
//! Keys carry the client's slot in their top bits ([`CLIENT_SHIFT`]), so a
//! worker knows whose result queue a task goes back to. Deadlines sit in a
//! min-heap with lazy deletion: a task that finishes is only removed from the
//! entry map, and its heap node is dropped when it reaches the top. The caller
//! keeps one timer, at the deadline [`Pending::insert`] or [`Pending::expire`]
//! asks for, however many tasks are in flight.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use crate::wire::CLIENT_SHIFT;

/// Keys a client hands out before its counter wraps (never, in practice).
const KEY_MASK: u64 = (1 << CLIENT_SHIFT) - 1;
/// The heap is rebuilt from the live entries when it holds this many more
/// nodes than there are tasks in flight (finished tasks with far deadlines).
const HEAP_SLACK: usize = 1024;

/// Tasks in flight, `T` being what the caller keeps for each.
#[derive(Debug)]
pub struct Pending<T> {
    base: u64,
    counter: u64,
    entries: HashMap<u64, (T, u64)>,
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    armed: Option<u64>,
}

impl<T> Pending<T> {
    /// The in-flight set of client `client`.
    pub fn new(client: u32) -> Self {
        Pending {
            base: u64::from(client) << CLIENT_SHIFT,
            counter: 0,
            entries: HashMap::new(),
            deadlines: BinaryHeap::new(),
            armed: None,
        }
    }

    /// A key no task in flight has.
    pub fn next_key(&mut self) -> u64 {
        loop {
            self.counter = (self.counter + 1) & KEY_MASK;
            let key = self.base | self.counter;
            if self.counter != 0 && !self.entries.contains_key(&key) {
                return key;
            }
        }
    }

    /// Adds task `key`, due at `deadline_ns`. Returns the time the caller's
    /// timer must now fire at, when it must be (re)armed: nothing was armed,
    /// or this deadline is earlier than the armed one.
    pub fn insert(&mut self, key: u64, entry: T, deadline_ns: u64) -> Option<u64> {
        self.entries.insert(key, (entry, deadline_ns));
        self.deadlines.push(Reverse((deadline_ns, key)));
        if self.deadlines.len() > 2 * self.entries.len() + HEAP_SLACK {
            self.rebuild();
        }
        match self.armed {
            Some(armed) if armed <= deadline_ns => None,
            _ => {
                self.armed = Some(deadline_ns);
                self.armed
            }
        }
    }

    pub fn get(&self, key: u64) -> Option<&T> {
        self.entries.get(&key).map(|(entry, _)| entry)
    }

    /// Takes task `key` out (it finished, failed or was cancelled).
    pub fn remove(&mut self, key: u64) -> Option<T> {
        self.entries.remove(&key).map(|(entry, _)| entry)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller's timer fired at `now_ns`: takes out every task whose
    /// deadline passed, and returns them with the time the timer must fire
    /// next (`None`: no task in flight).
    pub fn expire(&mut self, now_ns: u64) -> (Vec<(u64, T)>, Option<u64>) {
        let mut due = Vec::new();
        while let Some(&Reverse((deadline, key))) = self.deadlines.peek() {
            if deadline > now_ns {
                break;
            }
            self.deadlines.pop();
            if self.entries.get(&key).is_some_and(|(_, d)| *d == deadline) {
                if let Some((entry, _)) = self.entries.remove(&key) {
                    due.push((key, entry));
                }
            }
        }
        self.prune();
        self.armed = self
            .deadlines
            .peek()
            .map(|Reverse((deadline, _))| *deadline);
        (due, self.armed)
    }

    /// Takes out every task (the flow stops).
    pub fn drain(&mut self) -> Vec<(u64, T)> {
        self.deadlines.clear();
        self.armed = None;
        self.entries
            .drain()
            .map(|(key, (entry, _))| (key, entry))
            .collect()
    }

    /// Every entry, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.values().map(|(entry, _)| entry)
    }

    /// Every task's key and entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.entries.iter().map(|(key, (entry, _))| (*key, entry))
    }

    /// Drops heap nodes of finished tasks from the top.
    fn prune(&mut self) {
        while let Some(&Reverse((deadline, key))) = self.deadlines.peek() {
            if self.entries.get(&key).is_some_and(|(_, d)| *d == deadline) {
                break;
            }
            self.deadlines.pop();
        }
    }

    fn rebuild(&mut self) {
        self.deadlines = self
            .entries
            .iter()
            .map(|(key, (_, deadline))| Reverse((*deadline, *key)))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_client_and_are_unique() {
        let mut pending = Pending::<()>::new(5);
        let a = pending.next_key();
        let b = pending.next_key();
        assert_ne!(a, b);
        assert_eq!(a >> CLIENT_SHIFT, 5);
        assert_eq!(b >> CLIENT_SHIFT, 5);
    }

    #[test]
    fn the_timer_is_armed_for_the_earliest_deadline_only() {
        let mut pending = Pending::new(0);
        assert_eq!(pending.insert(1, "a", 100), Some(100));
        assert_eq!(
            pending.insert(2, "b", 150),
            None,
            "later than the armed timer"
        );
        assert_eq!(pending.insert(3, "c", 50), Some(50), "earlier: re-arm");
    }

    #[test]
    fn expire_takes_what_is_due_and_names_the_next_deadline() {
        let mut pending = Pending::new(0);
        pending.insert(1, "a", 100);
        pending.insert(2, "b", 200);
        pending.insert(3, "c", 300);
        assert_eq!(pending.remove(2), Some("b"));
        let (due, next) = pending.expire(250);
        assert_eq!(due, vec![(1, "a")]);
        assert_eq!(next, Some(300));
        assert_eq!(pending.len(), 1);
        let (due, next) = pending.expire(300);
        assert_eq!(due, vec![(3, "c")]);
        assert_eq!(next, None);
        assert!(pending.is_empty());
    }

    #[test]
    fn finished_tasks_do_not_fire_the_timer_again() {
        let mut pending = Pending::new(0);
        pending.insert(1, "a", 100);
        pending.insert(2, "b", 400);
        pending.remove(1);
        let (due, next) = pending.expire(100);
        assert!(due.is_empty());
        assert_eq!(next, Some(400), "the finished task's node is pruned");
    }

    #[test]
    fn the_heap_stays_near_the_number_of_tasks_in_flight() {
        let mut pending = Pending::new(0);
        for i in 0..100_000u64 {
            let key = pending.next_key();
            pending.insert(key, i, u64::MAX - i);
            pending.remove(key);
        }
        assert!(pending.deadlines.len() <= HEAP_SLACK + 1);
    }

    #[test]
    fn drain_takes_everything() {
        let mut pending = Pending::new(0);
        pending.insert(1, "a", 100);
        pending.insert(2, "b", 200);
        let mut all = pending.drain();
        all.sort_unstable();
        assert_eq!(all, vec![(1, "a"), (2, "b")]);
        assert_eq!(pending.insert(3, "c", 500), Some(500));
    }
}
