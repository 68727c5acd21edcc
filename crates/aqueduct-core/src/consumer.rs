//! A worker's side of its step, free of Python: taking batches from the
//! step's queue (a burst of them after one wait), pushing what it sends on —
//! to a later step or back to a client — waiting for room while the task is
//! still wanted, and waking each queue it fed once per burst.
//!
//! A burst: after one wait, a worker takes up to `burst` batches one after
//! the other as long as some are queued, without waiting again; each is
//! what is queued when the one before is done, so a slow handler still gets
//! full batches, and the consumers of the queues it feeds are woken once for
//! the whole burst ([`StepConsumer::flush`]).
//!
//! The parent's orders for the worker's slot (see [`crate::control`]) are
//! obeyed here: a held worker takes nothing until released; a retired one
//! takes nothing more and is told to exit, as when the queue is closed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::batch::{Batch, BatchAssembler, BatchPolicy, Claims};
use crate::control::{Control, HOLD, RETIRE};
use crate::error::{Error, Result};
use crate::notify::{monotonic_ns, EventFd};
use crate::queue::{Message, MessageHeader, TaskQueue, PUSH_WAIT_NO_DEADLINE, WAIT_SLICE};
use crate::wire::{client_of, KIND_DROPPED, KIND_ERROR, MAX_CLIENTS, MAX_STEPS};

/// Where a worker stands in its flow and how it batches.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerConfig {
    /// Its step's index.
    pub step: usize,
    /// Its claim slot (in the control block).
    pub slot: usize,
    pub batch: BatchPolicy,
    /// Most batches taken after one wait (>= 1).
    pub burst: usize,
}

/// A worker's side of its step (see the module docs).
#[derive(Debug)]
pub struct StepConsumer {
    config: ConsumerConfig,
    assembler: BatchAssembler,
    /// Every step's input queue, then one result queue per client.
    queues: Vec<Arc<TaskQueue>>,
    /// One per client.
    doorbells: Vec<Arc<EventFd>>,
    control: Arc<Control>,
    /// Batches taken in this burst.
    taken: usize,
    /// Bit `i`: queue `i` got messages this burst (a flow has at most
    /// `MAX_STEPS + MAX_CLIENTS` queues, which `u128` holds).
    touched: u128,
}

impl StepConsumer {
    pub fn new(
        config: ConsumerConfig,
        queues: Vec<Arc<TaskQueue>>,
        doorbells: Vec<Arc<EventFd>>,
        control: Arc<Control>,
    ) -> Result<Self> {
        let clients = doorbells.len();
        let fits = config.step + clients < queues.len()
            && clients >= 1
            && clients <= MAX_CLIENTS as usize
            && queues.len() - clients <= MAX_STEPS
            && config.burst >= 1;
        if !fits {
            return Err(Error::InvalidArgument(format!(
                "step {} of {} queues with {clients} clients",
                config.step,
                queues.len()
            )));
        }
        let assembler = BatchAssembler::new(config.batch);
        let policy = assembler.policy();
        if let (Some(objective), Some(schedule)) = (policy.objective, control.schedule(config.step))
        {
            let objective_ns = u64::try_from(objective.as_nanos())
                .unwrap_or(u64::MAX)
                .max(1);
            schedule.declare(objective_ns, policy.size);
        }
        Ok(StepConsumer {
            assembler,
            config,
            queues,
            doorbells,
            control,
            taken: 0,
            touched: 0,
        })
    }

    pub fn steps(&self) -> usize {
        self.queues.len() - self.doorbells.len()
    }

    /// Index of the result queue of the client that submitted `key`.
    pub fn results_of(&self, key: u64) -> usize {
        self.steps() + client_of(key, self.doorbells.len() as u32) as usize
    }

    fn claims(&self) -> Claims<'_> {
        Claims {
            control: &self.control,
            slot: self.config.slot,
            step: self.config.step,
        }
    }

    fn input(&self) -> &TaskQueue {
        &self.queues[self.config.step]
    }

    /// Starts a burst: waits for the first batch until `idle_deadline_ns`
    /// (an empty batch then), polling `interrupt` while asleep. A held
    /// worker waits for its release first; a retired one gets a closed batch.
    pub fn wait(
        &mut self,
        idle_deadline_ns: Option<u64>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<Batch> {
        self.taken = 1;
        // the batch before is done: a worker that exits now holds nothing
        self.control.clear_claims(self.config.slot);
        if !self.released_from_hold(idle_deadline_ns, interrupt) {
            let mut batch = self.closed_if_retired(Batch::default());
            batch.closed |= self.input().is_closed(); // the flow stops before its release
            return Ok(batch);
        }
        let (control, slot) = (&self.control, self.config.slot);
        let mut stop = || interrupt() || control.orders(slot) & RETIRE != 0;
        let batch = self.assembler.next_batch_claimed(
            self.input(),
            idle_deadline_ns,
            &mut stop,
            Some(self.claims()),
        )?;
        self.released(&batch);
        self.started(&batch);
        Ok(self.closed_if_retired(batch))
    }

    /// True when this worker has been told to take no more tasks.
    pub fn retired(&self) -> bool {
        self.control.orders(self.config.slot) & RETIRE != 0
    }

    /// An empty batch of a retired worker says "exit", like a closed queue.
    fn closed_if_retired(&self, mut batch: Batch) -> Batch {
        if batch.messages.is_empty() && batch.late.is_empty() && self.retired() {
            batch.closed = true;
        }
        batch
    }

    /// Waits while the worker is held; false when it was retired, its queue
    /// closed, the idle deadline passed or `interrupt` asked to stop first.
    fn released_from_hold(
        &self,
        idle_deadline_ns: Option<u64>,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> bool {
        let slot = self.config.slot;
        loop {
            let orders = self.control.orders(slot);
            if orders & RETIRE != 0 {
                return false;
            }
            if orders & HOLD == 0 {
                return true;
            }
            if self.input().is_closed() {
                return false;
            }
            let now = monotonic_ns();
            let slice = match idle_deadline_ns {
                Some(d) if now >= d => return false,
                Some(d) => std::time::Duration::from_nanos(d - now).min(WAIT_SLICE),
                None => WAIT_SLICE,
            };
            self.control.wait_orders(slot, orders, slice);
            if interrupt() {
                return false;
            }
        }
    }

    /// The burst's next batch, of what is queued now (empty: nothing is);
    /// `None` once the burst took its most batches.
    pub fn next_in_burst(&mut self) -> Result<Option<Batch>> {
        if self.taken >= self.config.burst || self.retired() {
            return Ok(None);
        }
        self.taken += 1;
        let batch = self
            .assembler
            .next_ready(self.input(), Some(self.claims()))?;
        self.released(&batch);
        self.started(&batch);
        Ok(Some(batch))
    }

    /// Continuous batching: up to `room` more tasks beside the tasks of
    /// `holding` (their keys are claimed again, so a worker that dies fails
    /// them all). Takes what is queued now; when the last iteration
    /// retired `left` tasks, waits up to the batch timeout for as many to
    /// take their places (their callers are likely to send the next ones
    /// at once), polling `interrupt`.
    pub fn admit(
        &mut self,
        room: usize,
        holding: &[u64],
        left: usize,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<Batch> {
        let claims = self.claims();
        claims.control.clear_claims(claims.slot);
        for &key in holding {
            claims.control.claim(claims.slot, key);
        }
        if self.retired() {
            return Ok(Batch::default()); // the tasks in hand finish; none join
        }
        let timeout = self.config.batch.timeout;
        let until =
            (left > 0 && !timeout.is_zero()).then(|| monotonic_ns() + timeout.as_nanos() as u64);
        let batch =
            self.assembler
                .admit(self.input(), room, left, until, interrupt, Some(claims))?;
        self.released(&batch);
        Ok(batch)
    }

    /// True when the task of `header` is no longer wanted (its caller
    /// cancelled it or its deadline passed); `count` records it in the
    /// step's metrics (the task leaves its batch).
    pub fn unwanted(&self, header: &MessageHeader, count: bool) -> bool {
        let cancelled = self.control.is_cancelled(header.key);
        let gone = cancelled || header.is_expired(monotonic_ns());
        if gone && count {
            if let Some(m) = self.control.metrics(self.config.step) {
                let counter = if cancelled { &m.cancelled } else { &m.expired };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        gone
    }

    /// Frees the room taken messages held (ringing the doorbells of clients
    /// waiting for it).
    fn released(&self, batch: &Batch) {
        if !batch.messages.is_empty() || !batch.expired.is_empty() {
            let bells: Vec<&EventFd> = self.doorbells.iter().map(AsRef::as_ref).collect();
            self.input().released(&bells);
        }
    }

    /// Tells the step's clients when the batch taken now should be done
    /// (a step with a latency objective: see [`crate::admission`]).
    fn started(&self, batch: &Batch) {
        if batch.messages.is_empty() || self.assembler.policy().objective.is_none() {
            return;
        }
        if let Some(schedule) = self.control.schedule(self.config.step) {
            schedule.started(monotonic_ns(), batch.messages.len());
        }
    }

    /// The handler took `took_ns` for a batch of `tasks` tasks.
    pub fn record_handled(&self, took_ns: u64, tasks: usize) {
        if let Some(cost) = self.assembler.observe(tasks, took_ns) {
            if let Some(schedule) = self.control.schedule(self.config.step) {
                schedule.publish(cost);
            }
        }
        if let Some(m) = self.control.metrics(self.config.step) {
            m.handle_us.record(took_ns / 1000);
            m.batch_size.record(tasks as u64);
            m.handled.fetch_add(tasks as u64, Ordering::Relaxed);
        }
    }

    /// The largest payload queue `index` carries (None: no such queue).
    pub fn max_payload(&self, index: usize) -> Option<usize> {
        self.queues.get(index).map(|q| q.max_payload())
    }

    /// Pushes a message into queue `index` (its consumers are woken at
    /// [`Self::flush`]), waiting while the queue is full and the task still
    /// wanted: until its deadline, or [`PUSH_WAIT_NO_DEADLINE`] without one.
    /// False when it gave up (still full, closed, interrupted, or a message
    /// that can never fit); `Err` only for a queue found corrupt.
    pub fn push(
        &mut self,
        index: usize,
        header: &MessageHeader,
        parts: &[&[u8]],
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<bool> {
        let Some(queue) = self.queues.get(index) else {
            return Err(Error::InvalidArgument(format!("no queue {index}")));
        };
        let pushed = match queue.push_parts(header, parts) {
            Err(Error::Full) => {
                let give_up = if header.deadline_ns == 0 {
                    monotonic_ns() + PUSH_WAIT_NO_DEADLINE.as_nanos() as u64
                } else {
                    header.deadline_ns
                };
                queue.push_waiting(header, parts, Some(give_up), interrupt)
            }
            done => done,
        };
        match pushed {
            Ok(()) => {
                self.touched |= 1 << index;
                Ok(true)
            }
            Err(e @ Error::Corrupt(_)) => Err(e),
            Err(_) => Ok(false),
        }
    }

    /// Pushes an error report for task `key` to its client; returns the
    /// queue it went to.
    pub fn send_error(
        &mut self,
        key: u64,
        priority: u32,
        report: &[u8],
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<usize> {
        let index = self.results_of(key);
        let header = notice(key, KIND_ERROR, priority);
        self.push(index, &header, &[report], interrupt)?;
        Ok(index)
    }

    /// Tells the client of a dropped task that no worker reads the blocks
    /// of its arena the task refers to any more.
    pub fn send_dropped(
        &mut self,
        message: &Message,
        interrupt: &mut dyn FnMut() -> bool,
    ) -> Result<usize> {
        let h = message.header;
        let index = self.results_of(h.key);
        self.push(
            index,
            &notice(h.key, KIND_DROPPED, h.priority),
            &[],
            interrupt,
        )?;
        Ok(index)
    }

    /// Notes that queue `index` got a message pushed by someone else (the
    /// Python half): it is woken at [`Self::flush`].
    pub fn touch(&mut self, index: usize) {
        if index < self.queues.len() {
            self.touched |= 1 << index;
        }
    }

    /// Wakes the consumer of every queue the burst pushed to, once.
    pub fn flush(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        for index in 0..self.queues.len() {
            if touched & (1 << index) != 0 {
                self.notify(index);
            }
        }
    }

    /// Wakes the consumers of queue `index`: a step's workers, or a client
    /// through its doorbell.
    pub fn notify(&self, index: usize) {
        let bell = index
            .checked_sub(self.steps())
            .and_then(|client| self.doorbells.get(client))
            .map(AsRef::as_ref);
        if let Some(queue) = self.queues.get(index) {
            queue.notify(bell);
        }
    }
}

/// The header of a message about task `key` with no deadline.
fn notice(key: u64, kind: u32, priority: u32) -> MessageHeader {
    MessageHeader {
        key,
        deadline_ns: 0,
        kind,
        priority,
        enqueued_ns: 0,
        entered_ns: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::queue::QueueConfig;
    use crate::wire::CLIENT_SHIFT;

    fn consumer(burst: usize) -> StepConsumer {
        let queue = || Arc::new(TaskQueue::create(QueueConfig::default()).expect("queue"));
        StepConsumer::new(
            ConsumerConfig {
                step: 0,
                slot: 0,
                batch: BatchPolicy {
                    size: 2,
                    timeout: Duration::ZERO,
                    objective: None,
                },
                burst,
            },
            vec![queue(), queue(), queue(), queue()], // 2 steps, 2 clients
            vec![
                Arc::new(EventFd::new().expect("eventfd")),
                Arc::new(EventFd::new().expect("eventfd")),
            ],
            Arc::new(Control::create(1, 0).expect("control")),
        )
        .expect("consumer")
    }

    fn task(key: u64) -> MessageHeader {
        MessageHeader {
            key,
            ..MessageHeader::default()
        }
    }

    #[test]
    fn a_burst_takes_at_most_its_batches_after_one_wait() {
        let mut c = consumer(2);
        for key in 0..6 {
            c.queues[0].push(&task(key), b"t").expect("room");
        }
        let first = c.wait(None, &mut || false).expect("intact");
        assert_eq!(first.messages.len(), 2);
        let second = c
            .next_in_burst()
            .expect("intact")
            .expect("within the burst");
        assert_eq!(second.messages.len(), 2);
        assert!(
            c.next_in_burst().expect("intact").is_none(),
            "the burst is over"
        );
        assert_eq!(
            c.wait(None, &mut || false).expect("intact").messages.len(),
            2
        );
    }

    #[test]
    fn answers_go_to_the_client_that_sent_the_task_and_wake_it_once() {
        let mut c = consumer(1);
        let key = (1 << CLIENT_SHIFT) | 7;
        assert_eq!(c.results_of(key), 3);
        let to = c
            .send_error(key, 0, b"report", &mut || false)
            .expect("intact");
        assert_eq!(to, 3);
        assert_eq!(c.touched, 1 << 3);
        c.flush();
        assert_eq!(c.touched, 0);
        let got = c.queues[3].try_pop().expect("intact").expect("the report");
        assert_eq!(
            (got.header.kind, got.payload()),
            (KIND_ERROR, &b"report"[..])
        );
    }

    #[test]
    fn a_continuous_batch_admits_beside_what_it_holds() {
        let mut c = consumer(1);
        for key in 10..14 {
            c.queues[0].push(&task(key), b"t").expect("room");
        }
        let batch = c.admit(1, &[1, 2], 0, &mut || false).expect("admitted");
        let keys: Vec<u64> = batch.messages.iter().map(|m| m.header.key).collect();
        assert_eq!(keys, vec![10], "no more than the room");
        assert_eq!(
            c.control.claims(0),
            vec![1, 2, 10],
            "held tasks stay claimed"
        );
        c.control.cancel(11);
        let batch = c.admit(5, &[1], 0, &mut || false).expect("admitted");
        assert_eq!(batch.messages.len(), 2, "at most the batch size");
        assert_eq!(batch.expired.len(), 1, "the cancelled one is dropped");
        assert!(c.unwanted(&task(11), false));
        assert!(!c.unwanted(&task(12), false));
    }

    #[test]
    fn a_push_into_a_closed_queue_gives_up() {
        let mut c = consumer(1);
        c.queues[1].close();
        assert!(!c.push(1, &task(1), &[b"t"], &mut || false).expect("intact"));
        assert_eq!(c.touched, 0);
    }

    #[test]
    fn a_step_past_its_queues_is_refused() {
        let queue = Arc::new(TaskQueue::create(QueueConfig::default()).expect("queue"));
        let made = StepConsumer::new(
            ConsumerConfig {
                step: 1,
                slot: 0,
                batch: BatchPolicy {
                    size: 1,
                    timeout: Duration::ZERO,
                    objective: None,
                },
                burst: 1,
            },
            vec![Arc::clone(&queue), queue],
            vec![Arc::new(EventFd::new().expect("eventfd"))],
            Arc::new(Control::create(1, 0).expect("control")),
        );
        assert!(made.is_err());
    }

    #[test]
    fn a_held_worker_takes_nothing_until_released() {
        let mut c = consumer(1);
        c.queues[0].push(&task(1), b"t").expect("room");
        c.control.set_orders(0, HOLD);
        let soon = monotonic_ns() + 30_000_000;
        let idle = c.wait(Some(soon), &mut || false).expect("intact");
        assert!(
            idle.messages.is_empty() && !idle.closed,
            "held: nothing taken"
        );
        assert_eq!(c.queues[0].len(), 1);
        let control = Arc::clone(&c.control);
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            control.set_orders(0, 0);
        });
        let started = std::time::Instant::now();
        let batch = c.wait(None, &mut || false).expect("intact");
        releaser.join().expect("releaser");
        assert_eq!(batch.messages.len(), 1);
        assert!(
            started.elapsed() < WAIT_SLICE,
            "woken by the release, not by the next look around"
        );
    }

    #[test]
    fn a_held_worker_exits_when_its_queue_closes() {
        let mut c = consumer(1);
        c.queues[0].push(&task(1), b"t").expect("room");
        c.control.set_orders(0, HOLD);
        c.queues[0].close();
        let exit = c.wait(None, &mut || false).expect("intact");
        assert!(
            exit.closed && exit.messages.is_empty(),
            "a held worker takes nothing"
        );
    }

    #[test]
    fn a_retired_worker_takes_no_more_and_is_told_to_exit() {
        let mut c = consumer(4);
        for key in 0..6 {
            c.queues[0].push(&task(key), b"t").expect("room");
        }
        assert_eq!(
            c.wait(None, &mut || false).expect("intact").messages.len(),
            2
        );
        c.control.add_orders(0, RETIRE);
        assert!(
            c.next_in_burst().expect("intact").is_none(),
            "the burst ends"
        );
        let exit = c.wait(None, &mut || false).expect("intact");
        assert!(exit.closed && exit.messages.is_empty());
        let none = c.admit(2, &[1], 0, &mut || false).expect("intact");
        assert!(none.messages.is_empty(), "nothing joins an active set");
        assert_eq!(c.control.claims(0), vec![1], "what it holds stays claimed");
        assert_eq!(c.queues[0].len(), 4, "left for the other workers");
    }

    #[test]
    fn retiring_wakes_a_worker_asleep_on_its_queue() {
        let mut c = consumer(1);
        let control = Arc::clone(&c.control);
        let retirer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            control.add_orders(0, RETIRE);
        });
        let batch = c.wait(None, &mut || false).expect("intact");
        retirer.join().expect("retirer");
        assert!(batch.closed);
    }
}
