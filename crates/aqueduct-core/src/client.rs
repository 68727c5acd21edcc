//! A client of a flow: one process's way in and out of it, whatever waits
//! for the answers (an asyncio future in the binding, a connection in the
//! HTTP server).
//!
//! It hands out task keys (the client's slot in their top bits), pushes
//! tasks into a step's queue — or, when the queue is full and the client
//! waits for room, keeps them in arrival order until a worker frees some —,
//! keeps what waits for each task with its deadline ([`Pending`]), takes the
//! answers from the client's result queue, and holds the blocks of the
//! client's arena that a task refers to until an answer about that task
//! comes back (a worker may read them until then, even after the caller
//! gave up).
//!
//! Wake-ups: a client that runs an event loop defers the wake-up of a step's
//! workers to the end of the loop's iteration ([`ClientCore::flush`]), so a
//! burst of tasks costs one wake-up; a lone task of a step that takes one
//! task per batch wakes them at once, and its caller may spin on the result
//! queue for a few microseconds instead of paying a kernel wake-up, while
//! that pays ([`ClientCore::spin_budget`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::control::Control;
use crate::error::{Error, Result};
use crate::notify::{monotonic_ns, EventFd};
use crate::pending::Pending;
use crate::queue::{Message, MessageHeader, TaskQueue};
use crate::spin::SpinPolicy;
use crate::tracked_arena::TrackedArena;
use crate::wire::{base_kind, is_part, KIND_DROPPED, MAX_STEPS};

/// How a client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Its client slot (the top bits of its keys, its result queue).
    pub slot: u32,
    /// A full queue fails the task (`Error::Full`) instead of keeping it
    /// until a worker frees room.
    pub reject_when_full: bool,
    /// The first step takes one task per batch: a lone task wakes its
    /// workers at once (a batching step's wait for the iteration's end, so
    /// that tasks sent together share a batch).
    pub eager: bool,
    /// Longest spin on the result queue for a lone task's answer.
    pub spin: Duration,
    /// Metrics slot where the time answers waited is recorded (None: off).
    pub metrics_step: Option<usize>,
}

/// The segments a client uses.
#[derive(Debug, Clone)]
pub struct ClientQueues {
    /// Every step's input queue.
    pub steps: Vec<Arc<TaskQueue>>,
    /// This client's result queue.
    pub results: Arc<TaskQueue>,
    /// Rung by workers when this client's result queue gets answers or a
    /// full step queue gets room (None: the client waits on the queue).
    pub doorbell: Option<Arc<EventFd>>,
    pub control: Arc<Control>,
    /// This client's arena: blocks its tasks refer to are released when an
    /// answer about the task comes back.
    pub arena: Option<Arc<TrackedArena>>,
}

/// How the tasks given to a client ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub done: u64,
    pub failed: u64,
    pub timeout: u64,
    pub cancelled: u64,
}

/// What a task is sent as: into step `step`'s queue, its header and payload
/// parts, and the blocks of the client's arena it refers to (retained now,
/// released when an answer about it comes back).
#[derive(Debug)]
pub struct Outbound<'a> {
    pub step: usize,
    pub header: MessageHeader,
    pub parts: &'a [&'a [u8]],
    pub blocks: Vec<u64>,
}

/// What the caller of [`ClientCore::submit`] does next.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    /// Arm the timer for this deadline (the earliest one changed).
    pub timer: Option<u64>,
    /// Schedule one [`ClientCore::flush`] at the end of the loop's iteration.
    pub flush: bool,
    /// The workers were woken for a lone task: spin for its answer
    /// ([`ClientCore::spin_budget`]).
    pub spin: bool,
    /// The queue was full: the task waits in the client until room frees.
    pub backlogged: bool,
}

/// One answer taken from the result queue: the message, what waited for
/// it (None: nobody does any more), and the blocks of the client's arena
/// the task held — release them with [`ClientCore::release`] once the
/// answer is delivered (its views, if any, hold them from then on).
/// A part leaves the waiter and blocks where they are.
#[derive(Debug)]
pub struct Answer<W, S = ()> {
    pub message: Message,
    pub waiter: Option<W>,
    pub blocks: Vec<u64>,
    /// A part of a streamed result ([`is_part`]): the task is not over, so
    /// its waiter stays and so do its blocks.
    pub part: bool,
    /// For a part: where its waiter streams to, taken when the part was
    /// (see [`ClientCore::drain_streams`]); None: nobody streams it.
    pub sink: Option<S>,
}

/// What one [`ClientCore::drain`] took.
#[derive(Debug)]
pub struct Drained<W, S = ()> {
    pub answers: Vec<Answer<W, S>>,
    /// The result queue holds what no process writes: nothing more may be
    /// read from it.
    pub corrupt: Option<Error>,
}

/// A task kept in arrival order until its step's queue has room.
#[derive(Debug)]
struct Waiting {
    header: MessageHeader,
    payload: Vec<u8>,
}

/// One client of a flow (see the module docs); `W` is what waits for a task.
#[derive(Debug)]
pub struct ClientCore<W> {
    config: ClientConfig,
    queues: ClientQueues,
    pending: Pending<W>,
    /// Task key -> blocks of the client's arena it refers to.
    held: HashMap<u64, Vec<u64>>,
    /// Per step: tasks waiting for room; new ones go behind them.
    backlogs: Vec<VecDeque<Waiting>>,
    /// Bit `i`: step `i`'s queue got tasks since its workers were woken.
    deferred: u64,
    flush_scheduled: bool,
    spin: SpinPolicy,
    /// Answers the last drain took: a caller that waits for one task at a
    /// time leaves one; a burst of callers, many.
    last_drained: usize,
    counts: Counts,
}

impl<W> ClientCore<W> {
    pub fn new(config: ClientConfig, queues: ClientQueues) -> Result<Self> {
        if queues.steps.len() > MAX_STEPS {
            return Err(Error::InvalidArgument(format!(
                "a flow has at most {MAX_STEPS} steps, not {}",
                queues.steps.len()
            )));
        }
        Ok(ClientCore {
            pending: Pending::new(config.slot),
            held: HashMap::new(),
            backlogs: queues.steps.iter().map(|_| VecDeque::new()).collect(),
            deferred: 0,
            flush_scheduled: false,
            spin: SpinPolicy::new(config.spin),
            last_drained: 0,
            counts: Counts::default(),
            config,
            queues,
        })
    }

    pub fn queues(&self) -> &ClientQueues {
        &self.queues
    }

    pub fn slot(&self) -> u32 {
        self.config.slot
    }

    /// A key no task in flight has; any cancel mark it had is cleared.
    pub fn next_key(&mut self) -> u64 {
        let key = self.pending.next_key();
        self.queues.control.uncancel(key);
        key
    }

    /// Sends a task (keyed by [`Self::next_key`]) and keeps `waiter` for its
    /// answer until `deadline_ns`. `defer`: the caller runs a loop and will
    /// call [`Self::flush`] when told to. Errors: the queue is full and the
    /// client rejects (`Full`), closed, or the message never fits — nothing
    /// is kept then, and the blocks stay the caller's.
    pub fn submit(
        &mut self,
        out: Outbound<'_>,
        waiter: W,
        deadline_ns: u64,
        defer: bool,
    ) -> Result<Submitted> {
        let step = out.step;
        let Some(queue) = self.queues.steps.get(step).map(Arc::clone) else {
            return Err(Error::InvalidArgument(format!("no step {step}")));
        };
        self.admit(step, &queue, &out.header)?;
        let key = out.header.key;
        let lone = self.pending.is_empty();
        let mut backlogged = !self.backlogs[step].is_empty();
        if !backlogged {
            match queue.push_parts(&out.header, out.parts) {
                Ok(()) => {}
                Err(Error::Full) => {
                    // ask the workers to ring once they free room, and try
                    // again in case they just did
                    queue.want_space(self.config.slot);
                    match queue.push_parts(&out.header, out.parts) {
                        Ok(()) => {}
                        Err(Error::Full) if !self.config.reject_when_full => backlogged = true,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if backlogged {
            self.backlogs[step].push_back(Waiting {
                header: out.header,
                payload: out.parts.concat(),
            });
        }
        let timer = self.pending.insert(key, waiter, deadline_ns);
        self.hold(key, out.blocks);
        if backlogged {
            return Ok(Submitted {
                timer,
                backlogged,
                ..Submitted::default()
            });
        }
        let now = !defer || (lone && self.config.eager);
        let mut flush = false;
        if now {
            queue.notify(None);
        } else {
            self.deferred |= 1 << step;
            flush = !std::mem::replace(&mut self.flush_scheduled, true);
        }
        Ok(Submitted {
            timer,
            flush,
            spin: now && defer,
            backlogged,
        })
    }

    /// Refuses a task its step cannot leave within its latency objective
    /// (see [`crate::admission`]); counted as rejected in the step's metrics.
    fn admit(&self, step: usize, queue: &TaskQueue, header: &MessageHeader) -> Result<()> {
        let control = &self.queues.control;
        let Some(known) = control.schedule(step).and_then(|s| s.known()) else {
            return Ok(());
        };
        let queued = queue.len() + self.backlogs[step].len() as u64;
        let now = monotonic_ns();
        let waited = match header.entered_ns {
            0 => 0,
            entered => now.saturating_sub(entered),
        };
        if known.admits(now, waited, queued) {
            return Ok(());
        }
        if let Some(m) = control.metrics(step) {
            m.rejected.fetch_add(1, Ordering::Relaxed);
        }
        Err(Error::Overloaded(format!(
            "the task cannot make its latency objective of {} ms behind the {queued} queued: refused before any work",
            known.objective_ns / 1_000_000
        )))
    }

    fn hold(&mut self, key: u64, blocks: Vec<u64>) {
        if blocks.is_empty() {
            return;
        }
        if let Some(arena) = &self.queues.arena {
            for &block in &blocks {
                arena.retain(block);
            }
            self.held.insert(key, blocks);
        }
    }

    /// Releases blocks an answer's task held (see [`Answer`]).
    pub fn release(&self, blocks: &[u64]) {
        if let Some(arena) = &self.queues.arena {
            for &block in blocks {
                arena.release(block);
            }
        }
    }

    /// Wakes the workers of every step that got tasks since they were woken;
    /// true when one lone task was among them (its caller may spin).
    pub fn flush(&mut self) -> bool {
        self.flush_scheduled = false;
        let deferred = std::mem::take(&mut self.deferred);
        for (step, queue) in self.queues.steps.iter().enumerate() {
            if deferred & (1 << step) != 0 {
                queue.notify(None);
            }
        }
        deferred != 0 && self.pending.len() == 1
    }

    /// How long to spin for a lone task's answer now (zero: don't): only
    /// while spinning catches answers, the machine has a core to spare, and
    /// the last answers did not come in a burst.
    pub fn spin_budget(&self) -> Duration {
        if self.last_drained > 1 {
            return Duration::ZERO; // its siblings are about to be sent
        }
        self.spin.budget()
    }

    /// What a spin achieved (it saw an answer, or gave up).
    pub fn record_spin(&self, hit: bool) {
        self.spin.record(hit);
    }

    /// Takes up to `limit` answers from the result queue; what waited for
    /// each is taken out. Call [`Self::finish_drain`] after delivering them.
    pub fn drain(&mut self, limit: usize) -> Drained<W> {
        self.drain_streams(limit, |_| None)
    }

    /// As [`Self::drain`], with where each part goes: `sink_of(waiter)`
    /// of its task's waiter, asked as the part is taken (a final answer
    /// later in the same drain takes the waiter out).
    pub fn drain_streams<S>(
        &mut self,
        limit: usize,
        mut sink_of: impl FnMut(&W) -> Option<S>,
    ) -> Drained<W, S> {
        let results = &self.queues.results;
        let metrics = self
            .config
            .metrics_step
            .and_then(|step| self.queues.control.metrics(step));
        let now = monotonic_ns();
        let mut answers = Vec::new();
        let mut corrupt = None;
        while answers.len() < limit {
            let message = match results.try_pop() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    corrupt = Some(e);
                    break;
                }
            };
            if let Some(metrics) = metrics {
                let waited = now.saturating_sub(message.header.enqueued_ns) / 1000;
                metrics.transfer_us.record(waited);
            }
            let key = message.header.key;
            let kind = message.header.kind;
            if is_part(kind) {
                // the task goes on: what waits for it and its blocks stay
                let sink = self.pending.get(key).and_then(&mut sink_of);
                answers.push(Answer {
                    message,
                    waiter: None,
                    blocks: Vec::new(),
                    part: true,
                    sink,
                });
                continue;
            }
            let waiter = if base_kind(kind) == KIND_DROPPED {
                None // a notice that the blocks are free: the task is not over
            } else {
                self.pending.remove(key)
            };
            let blocks = self.held.remove(&key).unwrap_or_default();
            answers.push(Answer {
                message,
                waiter,
                blocks,
                part: false,
                sink: None,
            });
        }
        if !answers.is_empty() {
            self.last_drained = answers.len();
        }
        Drained { answers, corrupt }
    }

    /// After a drain that took `taken` answers (of at most `limit`): tells
    /// the workers waiting for room in the result queue, and re-arms the
    /// doorbell. True when answers came meanwhile: drain again.
    pub fn finish_drain(&self, taken: usize, limit: usize) -> bool {
        let results = &self.queues.results;
        if taken > 0 {
            results.released(&[]);
        }
        // re-armed whatever failed: a doorbell left unarmed never rings again
        taken >= limit || results.arm_doorbell()
    }

    /// Sends what waits for room, in arrival order, while there is room;
    /// tasks whose caller gave up meanwhile are dropped (their blocks
    /// released). Returns the errors of tasks that can never be sent.
    pub fn push_backlogs(&mut self) -> Vec<(W, Error)> {
        let mut failed = Vec::new();
        for (step, queue) in self.queues.steps.iter().enumerate() {
            let backlog = &mut self.backlogs[step];
            let mut pushed = false;
            while let Some(waiting) = backlog.front() {
                let key = waiting.header.key;
                if self.pending.get(key).is_some() {
                    match queue.push(&waiting.header, &waiting.payload) {
                        Ok(()) => pushed = true,
                        Err(Error::Full) => {
                            queue.want_space(self.config.slot);
                            break;
                        }
                        Err(e) => {
                            if let Some(waiter) = self.pending.remove(key) {
                                self.counts.failed += 1;
                                failed.push((waiter, e));
                            }
                            Self::release_held(&mut self.held, &self.queues.arena, key);
                        }
                    }
                } else {
                    Self::release_held(&mut self.held, &self.queues.arena, key);
                    // never sent
                }
                backlog.pop_front();
            }
            if pushed {
                queue.notify(None);
            }
        }
        failed
    }

    fn release_held(
        held: &mut HashMap<u64, Vec<u64>>,
        arena: &Option<Arc<TrackedArena>>,
        key: u64,
    ) {
        if let (Some(blocks), Some(arena)) = (held.remove(&key), arena) {
            for block in blocks {
                arena.release(block);
            }
        }
    }

    /// True while tasks wait in the client for room in some step's queue.
    pub fn has_backlog(&self) -> bool {
        self.backlogs.iter().any(|b| !b.is_empty())
    }

    /// The caller of task `key` gave up: workers skip it (its blocks stay
    /// held until a worker says it is done with them).
    pub fn cancel(&mut self, key: u64) -> Option<W> {
        let waiter = self.pending.remove(key)?;
        self.counts.cancelled += 1;
        self.queues.control.cancel(key);
        Some(waiter)
    }

    /// Tasks whose deadline passed by `now_ns`, taken out, and when the
    /// timer must fire next.
    pub fn expire(&mut self, now_ns: u64) -> (Vec<(u64, W)>, Option<u64>) {
        let (due, next) = self.pending.expire(now_ns);
        self.counts.timeout += due.len() as u64;
        (due, next)
    }

    /// When the timer must fire (the earliest deadline), if a task is in flight.
    pub fn next_deadline(&mut self) -> Option<u64> {
        self.pending.expire(0).1
    }

    /// Every task in flight or waiting, taken out (the flow stops, or its
    /// segments went away): the workers that used their blocks are gone,
    /// so the blocks are released too.
    pub fn fail_all(&mut self) -> Vec<(u64, W)> {
        let entries = self.pending.drain();
        self.counts.failed += entries.len() as u64;
        for backlog in &mut self.backlogs {
            backlog.clear();
        }
        let keys: Vec<u64> = self.held.keys().copied().collect();
        for key in keys {
            Self::release_held(&mut self.held, &self.queues.arena, key);
        }
        entries
    }

    /// An answer was delivered (`ok`) or turned into its caller's error.
    pub fn settled(&mut self, ok: bool) {
        if ok {
            self.counts.done += 1;
        } else {
            self.counts.failed += 1;
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// What waits for each task in flight, in no particular order.
    pub fn waiters(&self) -> impl Iterator<Item = &W> {
        self.pending.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Arena;
    use crate::cost::Cost;
    use crate::queue::QueueConfig;
    use crate::wire::{client_of, KIND_TASK};

    fn client(max_messages: u64, reject: bool) -> ClientCore<&'static str> {
        let queue = |max_messages| {
            Arc::new(
                TaskQueue::create(QueueConfig {
                    max_messages,
                    ..QueueConfig::default()
                })
                .expect("queue"),
            )
        };
        let arena = Arena::create(1 << 20).expect("arena");
        ClientCore::new(
            ClientConfig {
                slot: 3,
                reject_when_full: reject,
                eager: true,
                spin: Duration::ZERO,
                metrics_step: None,
            },
            ClientQueues {
                steps: vec![queue(max_messages)],
                results: queue(0),
                doorbell: None,
                control: Arc::new(Control::create(1, 0).expect("control")),
                arena: Some(Arc::new(TrackedArena::new(arena, true))),
            },
        )
        .expect("client")
    }

    fn send(
        client: &mut ClientCore<&'static str>,
        waiter: &'static str,
    ) -> Result<(u64, Submitted)> {
        send_with(client, waiter, Vec::new(), u64::MAX, true)
    }

    /// Submits a one-part task to step 0 holding `blocks` until `deadline_ns`.
    fn send_with(
        client: &mut ClientCore<&'static str>,
        waiter: &'static str,
        blocks: Vec<u64>,
        deadline_ns: u64,
        defer: bool,
    ) -> Result<(u64, Submitted)> {
        let key = client.next_key();
        let header = MessageHeader {
            key,
            kind: KIND_TASK,
            ..MessageHeader::default()
        };
        let out = Outbound {
            step: 0,
            header,
            parts: &[b"task"],
            blocks,
        };
        client
            .submit(out, waiter, deadline_ns, defer)
            .map(|s| (key, s))
    }

    /// What a worker does: takes a task and answers it.
    fn answer(client: &ClientCore<&'static str>) -> u64 {
        let step = &client.queues().steps[0];
        let task = step.try_pop().expect("intact").expect("a task");
        step.released(&[]);
        let mut header = task.header;
        header.enqueued_ns = 0;
        client
            .queues()
            .results
            .push(&header, b"done")
            .expect("room");
        header.key
    }

    #[test]
    fn keys_name_the_client_and_answers_reach_their_waiter() {
        let mut client = client(0, false);
        let (a, sent) = send(&mut client, "a").expect("sent");
        assert_eq!(client_of(a, 32), 3);
        assert!(sent.spin, "a lone task wakes its workers at once");
        let (_b, sent) = send(&mut client, "b").expect("sent");
        assert!(
            sent.flush && !sent.spin,
            "the second waits for the iteration's end"
        );
        assert_eq!(answer(&client), a);
        let drained = client.drain(16);
        let waiters: Vec<_> = drained.answers.iter().map(|x| x.waiter).collect();
        assert_eq!(waiters, vec![Some("a")]);
        assert_eq!(client.len(), 1);
    }

    #[test]
    fn a_cancelled_task_is_marked_for_the_workers_and_its_answer_goes_nowhere() {
        let mut client = client(0, false);
        let (key, _) = send(&mut client, "a").expect("sent");
        assert_eq!(client.cancel(key), Some("a"));
        assert!(client.queues().control.is_cancelled(key));
        assert_eq!(client.cancel(key), None, "once");
        answer(&client);
        let drained = client.drain(16);
        assert!(drained.answers[0].waiter.is_none());
        assert_eq!(client.counts().cancelled, 1);
    }

    #[test]
    fn a_full_queue_rejects_or_keeps_tasks_in_order_until_room_frees() {
        let mut rejecting = client(1, true);
        send(&mut rejecting, "a").expect("room for one");
        assert!(matches!(send(&mut rejecting, "b"), Err(Error::Full)));
        assert_eq!(rejecting.len(), 1, "nothing kept for a rejected task");

        let mut waiting = client(1, false);
        send(&mut waiting, "a").expect("room for one");
        let (b, sent) = send(&mut waiting, "b").expect("kept");
        assert!(sent.backlogged && waiting.has_backlog());
        let (c, _) = send(&mut waiting, "c").expect("kept behind b");
        assert!(waiting.cancel(c).is_some());
        answer(&waiting); // room for one
        assert!(waiting.push_backlogs().is_empty());
        assert!(!waiting.has_backlog(), "b sent, c dropped");
        assert_eq!(answer(&waiting), b);
    }

    #[test]
    fn a_task_that_cannot_make_the_objective_is_refused_at_push() {
        let mut client = client(0, false);
        let control = Arc::new(Control::create(1, 1).expect("control"));
        client.queues.control = Arc::clone(&control);
        let schedule = control.schedule(0).expect("step 0");
        schedule.declare(11_200_000, 4); // 11.2 ms (10 ms less the headroom), batches of 4
        for _ in 0..8 {
            send(&mut client, "before").expect("nothing learned: admitted");
        }
        // 1 ms a task: 8 queued on one worker = two rounds of 4 ms, its
        // own batch 4 ms, 2 ms left of a batch taken now: 14 ms > 10 ms
        schedule.publish(Cost {
            fixed_ns: 0.0,
            per_task_ns: 1e6,
        });
        schedule.started(monotonic_ns(), 2);
        let refused = send(&mut client, "late");
        assert!(matches!(refused, Err(Error::Overloaded(_))), "{refused:?}");
        assert_eq!(
            Error::Overloaded(String::new()).kind(),
            ("OverloadedError", 429)
        );
        assert_eq!(client.len(), 8, "nothing kept for it");
        let metrics = control.metrics(0).expect("step 0");
        assert_eq!(metrics.rejected.load(Ordering::Relaxed), 1);
        schedule.set_workers(2);
        send(&mut client, "two workers").expect("one round of 4 ms, its own 4, 2 in hand: 10 ms");
    }

    #[test]
    fn blocks_stay_held_until_an_answer_about_their_task_comes_back() {
        let mut client = client(0, false);
        let arena = client.queues().arena.clone().expect("arena");
        let block = arena.place(b"input", 1).expect("place").offset;
        let (key, _) = send_with(&mut client, "a", vec![block], u64::MAX, false).expect("sent");
        client.cancel(key); // the caller left; a worker may still read it
        assert!(arena.arena().used() > 0);
        answer(&client);
        let drained = client.drain(16);
        client.release(&drained.answers[0].blocks);
        assert_eq!(arena.arena().used(), 0);
    }

    #[test]
    fn parts_reach_the_waiter_and_leave_the_task_in_flight() {
        let mut client = client(0, false);
        let arena = client.queues().arena.clone().expect("arena");
        let block = arena.place(b"input", 1).expect("place").offset;
        let (key, _) = send_with(&mut client, "a", vec![block], u64::MAX, false).expect("sent");
        let results = &client.queues().results;
        for part in [&b"one"[..], b"two"] {
            let header = MessageHeader {
                key,
                kind: crate::wire::KIND_PART,
                ..MessageHeader::default()
            };
            results.push(&header, part).expect("room");
        }
        answer(&client); // the final answer, in the same drain as the parts
        let drained = client.drain_streams(16, |waiter| Some(waiter.to_uppercase()));
        let parts: Vec<_> = drained
            .answers
            .iter()
            .map(|a| {
                (
                    a.part,
                    a.waiter,
                    a.sink.clone(),
                    a.message.payload().to_vec(),
                )
            })
            .collect();
        let sink = Some("A".to_string());
        assert_eq!(
            parts,
            vec![
                (true, None, sink.clone(), b"one".to_vec()),
                (true, None, sink, b"two".to_vec()),
                (false, Some("a"), None, b"done".to_vec()),
            ]
        );
        assert!(client.is_empty(), "the answer took the task out");
        assert!(drained.answers[..2].iter().all(|a| a.blocks.is_empty()));
        assert_eq!(
            drained.answers[2].blocks,
            vec![block],
            "held until the answer"
        );
    }

    #[test]
    fn deadlines_expire_and_count() {
        let mut client = client(0, false);
        let (key, sent) = send_with(&mut client, "a", Vec::new(), 100, false).expect("sent");
        assert_eq!(sent.timer, Some(100));
        let (due, next) = client.expire(100);
        assert_eq!(due, vec![(key, "a")]);
        assert_eq!(next, None);
        assert_eq!(client.counts().timeout, 1);
    }
}
