//! A bounded queue of events for one client: progress that the client has not read yet is
//! dropped, oldest first, once the queue is full; results and terminal events never are.
//!
//! A stream's events wait here until the client reads them. A client that stops reading (a
//! stalled plugin, a `Generate` whose caller never polls) would otherwise make the daemon hold
//! every step's progress and preview PNG for as long as the job runs. Progress is only worth its
//! latest value, so dropping old progress loses nothing a client can act on; an image, a
//! `Finished` or a `Failed` is the answer itself and always arrives.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// How an event may be treated when a client falls behind.
pub trait Droppable {
    /// True for progress that a later event supersedes.
    fn droppable(&self) -> bool;
}

/// Events one client has not read yet, beyond which droppable ones give way.
pub const DEFAULT_CAPACITY: usize = 64;

struct State<T> {
    events: VecDeque<T>,
    /// The sender is gone: once `events` is empty, the stream ends.
    closed: bool,
    /// The receiver is gone: sending is pointless.
    abandoned: bool,
    /// Droppable events dropped so far (for logs and tests).
    dropped: u64,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    readable: Notify,
    capacity: usize,
}

/// The sending half; dropping it ends the stream after the queued events.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("outbox::Sender").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("outbox::Receiver").finish_non_exhaustive()
    }
}

/// The receiver went away; the event was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abandoned;

/// A queue holding up to `capacity` events before droppable ones give way (at least one).
pub fn channel<T: Droppable>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            events: VecDeque::new(),
            closed: false,
            abandoned: false,
            dropped: 0,
        }),
        readable: Notify::new(),
        capacity: capacity.max(1),
    });
    (Sender { shared: shared.clone() }, Receiver { shared })
}

impl<T: Droppable> Sender<T> {
    /// Queues `event`. When the queue is full, the oldest droppable event goes first: the one
    /// queued before, else this one if it is droppable itself; an event that is not droppable
    /// is always queued (so the queue holds at most `capacity` plus the results of one job).
    pub fn send(&self, event: T) -> Result<(), Abandoned> {
        let mut state = self.shared.state.lock().expect("outbox lock");
        if state.abandoned {
            return Err(Abandoned);
        }
        if state.events.len() >= self.shared.capacity {
            match state.events.iter().position(Droppable::droppable) {
                Some(oldest) => {
                    state.events.remove(oldest);
                    state.dropped += 1;
                }
                None if event.droppable() => {
                    state.dropped += 1;
                    return Ok(());
                }
                None => {}
            }
        }
        state.events.push_back(event);
        drop(state);
        self.shared.readable.notify_one();
        Ok(())
    }
}

impl<T> Sender<T> {
    /// Droppable events dropped so far because the client fell behind.
    pub fn dropped(&self) -> u64 {
        self.shared.state.lock().expect("outbox lock").dropped
    }

    /// Whether the receiver is gone.
    pub fn is_abandoned(&self) -> bool {
        self.shared.state.lock().expect("outbox lock").abandoned
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.state.lock().expect("outbox lock").closed = true;
        self.shared.readable.notify_one();
    }
}

impl<T> Receiver<T> {
    /// The next event; `None` once the sender is gone and every event was read.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            // Registered before looking, so a send between the look and the wait is not missed.
            let notified = self.shared.readable.notified();
            {
                let mut state = self.shared.state.lock().expect("outbox lock");
                if let Some(event) = state.events.pop_front() {
                    return Some(event);
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// The events as a stream (for a gRPC response).
    pub fn into_stream(self) -> impl futures::Stream<Item = T> + Send + 'static
    where
        T: Send + 'static,
    {
        futures::stream::unfold(self, |mut receiver| async move {
            let event = receiver.recv().await?;
            Some((event, receiver))
        })
    }

    /// Events waiting to be read.
    pub fn len(&self) -> usize {
        self.shared.state.lock().expect("outbox lock").events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().expect("outbox lock");
        state.abandoned = true;
        state.events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    enum Event {
        Progress(u32),
        Image(u32),
        Finished,
    }

    impl Droppable for Event {
        fn droppable(&self) -> bool {
            matches!(self, Event::Progress(_))
        }
    }

    fn drain(receiver: &mut Receiver<Event>) -> Vec<Event> {
        let mut events = Vec::new();
        futures::executor::block_on(async {
            while let Some(event) = receiver.recv().await {
                events.push(event);
            }
        });
        events
    }

    #[test]
    fn a_client_that_never_reads_holds_the_latest_progress_and_every_result() {
        let (sender, mut receiver) = channel(8);
        for step in 0..1000 {
            sender.send(Event::Progress(step)).unwrap();
            if step % 250 == 0 {
                sender.send(Event::Image(step)).unwrap();
            }
            assert!(receiver.len() <= 8, "bounded: {}", receiver.len());
        }
        sender.send(Event::Finished).unwrap();
        let dropped = sender.dropped();
        drop(sender);
        let events = drain(&mut receiver);
        let images: Vec<_> = events.iter().filter(|e| matches!(e, Event::Image(_))).collect();
        assert_eq!(
            images,
            [
                &Event::Image(0),
                &Event::Image(250),
                &Event::Image(500),
                &Event::Image(750)
            ]
        );
        assert_eq!(
            events.last(),
            Some(&Event::Finished),
            "the terminal event is never dropped"
        );
        assert!(
            events.contains(&Event::Progress(999)),
            "the newest progress survives: {events:?}"
        );
        assert_eq!(
            dropped as usize + events.len(),
            1000 + 4 + 1,
            "each event is read or counted dropped"
        );
    }

    #[test]
    fn a_full_queue_of_results_still_takes_results_and_drops_new_progress() {
        let (sender, mut receiver) = channel(2);
        sender.send(Event::Image(1)).unwrap();
        sender.send(Event::Image(2)).unwrap();
        sender.send(Event::Progress(3)).unwrap();
        sender.send(Event::Image(4)).unwrap();
        drop(sender);
        assert_eq!(
            drain(&mut receiver),
            [Event::Image(1), Event::Image(2), Event::Image(4)]
        );
    }

    #[test]
    fn a_reader_sees_events_in_order_and_the_end_after_them() {
        let (sender, mut receiver) = channel(8);
        let reader = std::thread::spawn(move || drain(&mut receiver));
        for step in 0..5 {
            sender.send(Event::Progress(step)).unwrap();
        }
        sender.send(Event::Finished).unwrap();
        drop(sender);
        let events = reader.join().unwrap();
        assert_eq!(events.len(), 6);
        assert_eq!(events[0], Event::Progress(0));
        assert_eq!(events[5], Event::Finished);
    }

    #[test]
    fn sending_after_the_receiver_left_says_so() {
        let (sender, receiver) = channel::<Event>(8);
        drop(receiver);
        assert!(sender.is_abandoned());
        assert_eq!(sender.send(Event::Finished), Err(Abandoned));
    }
}
