//! The waiting line: fair across clients, in arrival order within each.
//!
//! Each job gets a round: one past its client's previous job (waiting or already started), or
//! the round being served now, whichever is later. Jobs start by (round, arrival). So a client that
//! queues ten jobs takes turns with everyone else instead of making the next client wait for all
//! ten, and a lone client's jobs run in the order it sent them. A job's position is its index in
//! that order (the job queue adds the jobs already running).
//!
//! [`QueueState`] is the whole line as the job queue keeps it under its lock: who waits, who
//! runs, and whether the daemon is stopping.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The jobs waiting and running, under the job queue's lock.
#[derive(Debug)]
pub struct QueueState<T> {
    /// Waiting jobs, fair across clients.
    pub pending: FairQueue<T>,
    pub running: Vec<RunningJob>,
    pub shutting_down: bool,
}

impl<T> Default for QueueState<T> {
    fn default() -> Self {
        Self {
            pending: FairQueue::default(),
            running: Vec::new(),
            shutting_down: false,
        }
    }
}

/// A job a worker has taken.
#[derive(Debug)]
pub struct RunningJob {
    pub id: String,
    /// Set to cancel it at its next step.
    pub cancel: Arc<AtomicBool>,
    /// Its model's folder.
    pub root: PathBuf,
}

#[derive(Debug)]
struct Entry<T> {
    round: u64,
    seq: u64,
    item: T,
}

#[derive(Debug)]
pub struct FairQueue<T> {
    /// Sorted by (round, seq): the order items will start in.
    entries: Vec<Entry<T>>,
    /// The round of the item taken last.
    served_round: u64,
    /// Each client's last queued round (clients whose last round is behind the one being
    /// served are dropped: the `max` in `push` would ignore it anyway).
    client_round: HashMap<String, u64>,
    next_seq: u64,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            served_round: 0,
            client_round: HashMap::new(),
            next_seq: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Queues `item` for `client`; returns its index in the start order.
    pub fn push(&mut self, client: &str, item: T) -> usize {
        let round = match self.client_round.get(client) {
            Some(&last) => self.served_round.max(last + 1),
            None => self.served_round,
        };
        self.client_round.insert(client.to_string(), round);
        let seq = self.next_seq;
        self.next_seq += 1;
        let at = self.entries.partition_point(|e| (e.round, e.seq) < (round, seq));
        self.entries.insert(at, Entry { round, seq, item });
        at
    }

    /// Takes the next item to start.
    pub fn pop(&mut self) -> Option<T> {
        if self.entries.is_empty() {
            return None;
        }
        let entry = self.entries.remove(0);
        self.served_round = self.served_round.max(entry.round);
        let served = self.served_round;
        self.client_round.retain(|_, round| *round >= served);
        Some(entry.item)
    }

    /// Removes the first item `matches` accepts.
    pub fn remove_first(&mut self, matches: impl Fn(&T) -> bool) -> Option<T> {
        let index = self.entries.iter().position(|e| matches(&e.item))?;
        Some(self.entries.remove(index).item)
    }

    /// Everything, in start order (the queue is left empty).
    pub fn drain(&mut self) -> Vec<T> {
        self.client_round.clear();
        self.entries.drain(..).map(|e| e.item).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// In start order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|e| &e.item)
    }

    /// In start order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().map(|e| &mut e.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(queue: &FairQueue<&'static str>) -> Vec<&'static str> {
        queue.iter().copied().collect()
    }

    #[test]
    fn one_client_runs_in_arrival_order() {
        let mut q = FairQueue::default();
        for (i, job) in ["a1", "a2", "a3"].into_iter().enumerate() {
            assert_eq!(q.push("a", job), i);
        }
        assert_eq!(
            [q.pop(), q.pop(), q.pop(), q.pop()],
            [Some("a1"), Some("a2"), Some("a3"), None]
        );
    }

    #[test]
    fn a_busy_client_takes_turns_with_a_newcomer() {
        let mut q = FairQueue::default();
        for job in ["a1", "a2", "a3", "a4"] {
            q.push("a", job);
        }
        assert_eq!(q.pop(), Some("a1"));
        // b arrives while a1 runs and a2..a4 wait: b1 goes next, c1 after it, then a's rest.
        assert_eq!(q.push("b", "b1"), 0);
        assert_eq!(q.push("c", "c1"), 1);
        assert_eq!(order(&q), ["b1", "c1", "a2", "a3", "a4"]);
        // b's second job waits for a's next turn.
        assert_eq!(q.push("b", "b2"), 3);
        assert_eq!(order(&q), ["b1", "c1", "a2", "b2", "a3", "a4"]);
        let started: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(started, ["b1", "c1", "a2", "b2", "a3", "a4"]);
    }

    #[test]
    fn a_started_job_counts_for_its_clients_turn() {
        let mut q = FairQueue::default();
        q.push("a", "a1");
        assert_eq!(q.pop(), Some("a1"));
        // a1 runs; a queues two more, then b arrives: b goes before a's second turn.
        q.push("a", "a2");
        q.push("a", "a3");
        q.push("b", "b1");
        assert_eq!(order(&q), ["b1", "a2", "a3"]);
    }

    #[test]
    fn a_client_that_comes_back_later_does_not_jump_ahead_of_waiting_ones() {
        let mut q = FairQueue::default();
        q.push("a", "a1");
        q.push("b", "b1");
        assert_eq!(q.pop(), Some("a1"));
        // a has nothing waiting; its next job is in the current round, after b1 (earlier).
        q.push("a", "a2");
        assert_eq!(order(&q), ["b1", "a2"]);
    }

    #[test]
    fn removing_a_job_keeps_the_rest_in_order() {
        let mut q = FairQueue::default();
        for job in ["a1", "a2"] {
            q.push("a", job);
        }
        q.push("b", "b1");
        assert_eq!(order(&q), ["a1", "b1", "a2"]);
        assert_eq!(q.remove_first(|j| *j == "b1"), Some("b1"));
        assert_eq!(q.remove_first(|j| *j == "zz"), None);
        assert_eq!(order(&q), ["a1", "a2"]);
        assert_eq!(q.drain(), ["a1", "a2"]);
        assert!(q.is_empty());
    }
}
