//! Requests of many threads sent to the KMS together, as the batch items of
//! one request message (KMIP 1.4, section 7.1).
//!
//! Why: a re-key of every VM home runs 16 workers, each doing a Decrypt and
//! an Encrypt per VM. One at a time on the one cached connection, the rest
//! each opened a TLS connection of their own per request: 32 ms a VM with
//! PyKMIP, five minutes at ten thousand VMs. Here a thread that finds no
//! message in flight sends every queued item (up to [`MAX_BATCH`]) in one
//! message; the others queue theirs meanwhile and wait for the answer.
//!
//! Only repeatable operations come here (the client's rule): an item whose
//! message failed in transport is handed back to its caller to send alone,
//! with the client's own retries and error reports, exactly as before
//! batching.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use super::message::ResponseError;
use super::transport::Deadline;
use super::ttlv::Item;

/// Most items in one message: every re-key worker's pair, with room.
pub const MAX_BATCH: usize = 64;

/// What came back for one item: its answer, or `None` to send it alone.
pub type Answer = Option<Result<Item, ResponseError>>;

/// The queue and the answers of one client's batched requests.
#[derive(Default)]
pub struct Batcher {
    /// Held only to queue, take or answer items, never during a round
    /// trip.
    state: Mutex<State>,
    /// Notified when a message's answers are in, or no message is in
    /// flight any more.
    answered: Condvar,
}

#[derive(Default)]
struct State {
    /// The ticket the next item gets.
    next_ticket: u64,
    /// Items waiting for a message: ticket, operation, batch item.
    queued: VecDeque<(u64, u32, Item)>,
    /// Answers not yet taken by their callers, by ticket. A Decrypt answer
    /// holds a DEK: each is taken at once, or dropped when its caller has
    /// given up (see `abandoned`).
    answers: HashMap<u64, Answer>,
    /// Tickets in flight whose callers stopped waiting (deadline): their
    /// answers are dropped on arrival.
    abandoned: HashSet<u64>,
    /// Whether a thread is sending a message now.
    sending: bool,
}

impl Batcher {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change to the state is complete before its lock is
        // released: a panic elsewhere leaves nothing half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `item` (an `operation`) in a message with whatever else is
    /// queued, through `send`, and returns its answer; `None` if it must be
    /// sent alone (its message failed, or `deadline` passed while waiting).
    /// `send` gets the items and their operations and returns one answer
    /// per item, in order.
    pub fn run(
        &self,
        operation: u32,
        item: Item,
        deadline: &Deadline,
        send: impl Fn(Vec<Item>, &[u32]) -> Vec<Answer>,
    ) -> Answer {
        let mut state = self.lock();
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queued.push_back((ticket, operation, item));
        loop {
            if let Some(answer) = state.answers.remove(&ticket) {
                return answer;
            }
            if !state.sending {
                state.sending = true;
                let count = state.queued.len().min(MAX_BATCH);
                let (tickets, (operations, items)): (Vec<u64>, (Vec<u32>, Vec<Item>)) = state
                    .queued
                    .drain(..count)
                    .map(|(ticket, operation, item)| (ticket, (operation, item)))
                    .unzip();
                drop(state);
                let mut answers = send(items, &operations);
                answers.resize_with(tickets.len(), || None);
                state = self.lock();
                state.sending = false;
                for (ticket, answer) in tickets.into_iter().zip(answers) {
                    if !state.abandoned.remove(&ticket) {
                        state.answers.insert(ticket, answer);
                    }
                }
                self.answered.notify_all();
                continue;
            }
            let Ok(left) = deadline.remaining() else {
                // Still queued: withdrawn. In flight: dropped on arrival.
                let queued = state.queued.len();
                state.queued.retain(|(queued, _, _)| *queued != ticket);
                if state.queued.len() == queued {
                    state.abandoned.insert(ticket);
                }
                return None;
            };
            state = self
                .answered
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::kmip::tags::tag;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn item(n: i32) -> Item {
        Item::integer(tag::BATCH_COUNT, n)
    }

    /// Threads that queue while a message is in flight go in the next one,
    /// together, and each gets its own answer.
    #[test]
    fn items_queued_during_a_round_trip_share_the_next_message() {
        const THREADS: usize = 12;
        let batcher = Batcher::default();
        let messages = AtomicUsize::new(0);
        let deadline = Deadline::after(Duration::from_secs(30));
        let send = |items: Vec<Item>, _: &[u32]| -> Vec<Answer> {
            if messages.fetch_add(1, Ordering::SeqCst) == 0 {
                // The first message is held until every other thread queued.
                while batcher.lock().queued.len() < THREADS - 1 {
                    std::thread::yield_now();
                }
            }
            items.into_iter().map(|i| Some(Ok(i))).collect()
        };
        std::thread::scope(|scope| {
            for n in 0..THREADS {
                let (batcher, messages, deadline, send) = (&batcher, &messages, &deadline, &send);
                scope.spawn(move || {
                    // Thread 0 sends first; the others queue behind it.
                    while n > 0 && messages.load(Ordering::SeqCst) == 0 {
                        std::thread::yield_now();
                    }
                    let answer = batcher.run(7, item(n as i32), deadline, send);
                    assert_eq!(answer.unwrap().unwrap(), item(n as i32));
                });
            }
        });
        // Thread 0's message, then one with the 11 others (one at a time:
        // 12 messages).
        assert_eq!(messages.load(Ordering::SeqCst), 2);
        assert!(batcher.lock().answers.is_empty());
    }

    #[test]
    fn a_failed_message_hands_every_item_back_to_send_alone() {
        let batcher = Batcher::default();
        let deadline = Deadline::after(Duration::from_secs(5));
        let answer = batcher.run(7, item(1), &deadline, |items, operations| {
            assert_eq!((items.len(), operations), (1, &[7][..]));
            Vec::new()
        });
        assert!(answer.is_none());
        let state = batcher.lock();
        assert!(state.answers.is_empty() && state.queued.is_empty() && !state.sending);
    }
}
