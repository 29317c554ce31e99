//! Reservations in batches. Reserves, commits and releases queue for one writer task, which
//! takes whatever has queued and runs it as one transaction:
//!
//! 1. it reads the reservations and the stock rows the batch names (on PostgreSQL locked as
//!    they are read, reservations by order id and then stock by SKU, the order every other
//!    writer follows);
//! 2. it decides each command in arrival order by the rules a transaction of its own follows
//!    (all lines or none, `available >= quantity`, idempotent finishes), on the levels the
//!    earlier commands of the batch left; a finish of a reservation the batch did not find is
//!    left to a transaction of its own after the batch (another writer may be inserting it);
//! 3. it writes the outcome ([`store::write_batch`]): the new reservations (as the batch leaves
//!    them) and their lines, the finished reservations (only where still active), each touched
//!    SKU's levels as a compare-and-set on the levels it read, the ledger, the events. On
//!    PostgreSQL that is one statement; on SQLite, in process, a multi-row statement per table.
//!
//! If a finish or a compare-and-set finds a row that moved meanwhile, or any statement fails,
//! the transaction is rolled back and every command of the batch runs again on its own, in a
//! transaction of its own ([`Outcome::Alone`]). A command is answered after its batch commits,
//! so an acknowledged reservation is as durable as before. What changes is the cost: a batch
//! costs five round trips on PostgreSQL (begin, two reads, one write, commit) and about ten
//! statements on SQLite whatever its size, where each command alone costs about seven.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use platform::clock::SharedClock;
use platform::error::ApiError;
use platform::events::Event;
use platform::outbox::Outbox;
use platform::store::Db;
use tokio::sync::{mpsc, oneshot};

use crate::domain::{Levels, Line, Movement, ReleaseReason, ReservationStatus};
use crate::service::{self, Context, KeptLevels, Reservation, ReserveError, Shortage};
use crate::store::{self, After, BatchWrites, Entry, Finish, LevelChange, ReservationRow};

/// Most commands one batch takes.
const MAX_BATCH: usize = 256;
/// Commands waiting for the writer before senders wait too.
const QUEUE: usize = 4_096;

/// How a batch answered a command: its result, or "run it alone" (the batch was rolled back).
pub(crate) enum Outcome<T> {
    Done(T),
    Alone,
}

/// The actor and correlation id of a command, owned (a [`Context`] borrows them), and the
/// caller's span, inside which the command's events are made (so they carry its trace).
pub(crate) struct Who {
    actor: Option<String>,
    correlation_id: Option<String>,
    span: tracing::Span,
}

impl Who {
    pub(crate) fn of(ctx: Context<'_>) -> Self {
        Self {
            actor: ctx.actor.map(str::to_owned),
            correlation_id: ctx.correlation_id.map(str::to_owned),
            span: tracing::Span::current(),
        }
    }

    fn ctx(&self) -> Context<'_> {
        Context {
            actor: self.actor.as_deref(),
            correlation_id: self.correlation_id.as_deref(),
        }
    }
}

pub(crate) enum Command {
    /// Reserve `lines` (merged and sorted by SKU) for the order until `ttl_ms` from now.
    Reserve {
        order_id: String,
        lines: Vec<Line>,
        ttl_ms: i64,
        who: Who,
        reply: oneshot::Sender<Outcome<Result<Reservation, ReserveError>>>,
    },
    /// Commit or release the order's reservation.
    Finish {
        order_id: String,
        to: ReservationStatus,
        reason: Option<ReleaseReason>,
        who: Who,
        reply: oneshot::Sender<Outcome<Result<Reservation, ApiError>>>,
    },
}

impl Command {
    fn order_id(&self) -> &str {
        match self {
            Self::Reserve { order_id, .. } | Self::Finish { order_id, .. } => order_id,
        }
    }

    fn answer(self, answer: Answer) {
        // A caller that went away does not need its answer; its change stands either way.
        match (self, answer) {
            (Self::Reserve { reply, .. }, Answer::Reserved(result)) => {
                let _ = reply.send(Outcome::Done(result));
            }
            (Self::Finish { reply, .. }, Answer::Finished(result)) => {
                let _ = reply.send(Outcome::Done(result));
            }
            (command, _) => command.alone(),
        }
    }

    fn alone(self) {
        match self {
            Self::Reserve { reply, .. } => {
                let _ = reply.send(Outcome::Alone);
            }
            Self::Finish { reply, .. } => {
                let _ = reply.send(Outcome::Alone);
            }
        }
    }
}

enum Answer {
    Reserved(Result<Reservation, ReserveError>),
    Finished(Result<Reservation, ApiError>),
    /// Decided after the batch, in a transaction of its own.
    Alone,
}

/// The task that writes batches. It ends when every sender is gone.
pub(crate) struct Writer {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    pub(crate) clock: SharedClock,
    pub(crate) levels: Arc<KeptLevels>,
}

impl Writer {
    /// Starts the writer. One per process: several would mostly wait on each other's row
    /// locks when orders share SKUs (measured on PostgreSQL with 100 SKUs: two writers gave
    /// three quarters of one writer's throughput, four gave two thirds). Writers of other
    /// processes, and commands run alone, lock rows in the same order as a batch (reservations by
    /// order id, then stock by SKU, then new reservations by order id), so none waits on another
    /// in a circle.
    pub(crate) fn spawn(self) -> mpsc::Sender<Command> {
        let (sender, queue) = mpsc::channel(QUEUE);
        tokio::spawn(self.run(queue));
        sender
    }

    async fn run(self, mut queue: mpsc::Receiver<Command>) {
        let mut commands = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut commands, MAX_BATCH).await > 0 {
            let batch: Vec<Command> = std::mem::take(&mut commands);
            match self.write(&batch).await {
                Ok(answers) => {
                    self.outbox.wake();
                    self.levels.forget();
                    for (command, answer) in batch.into_iter().zip(answers) {
                        command.answer(answer);
                    }
                }
                Err(err) => {
                    tracing::debug!(commands = batch.len(), error = %err, "a reservation batch was rolled back; each command runs alone");
                    for command in batch {
                        command.alone();
                    }
                }
            }
        }
    }

    async fn write(&self, commands: &[Command]) -> anyhow::Result<Vec<Answer>> {
        let now = self.clock.now_ms();
        let mut tx = self.db.begin().await?;

        let orders: BTreeSet<&str> = commands.iter().map(Command::order_id).collect();
        let orders: Vec<String> = orders.into_iter().map(str::to_owned).collect();
        let mut held: HashMap<String, Held> = HashMap::new();
        for (row, line) in store::reservations_with_lines_in(&mut tx, &orders).await? {
            let entry = held.entry(row.order_id.clone()).or_insert_with(|| Held {
                row,
                lines: Vec::new(),
                created: false,
            });
            entry.lines.extend(line);
        }

        let mut skus: BTreeSet<String> = BTreeSet::new();
        for command in commands {
            if let Command::Reserve { lines, .. } = command {
                skus.extend(lines.iter().map(|line| line.sku.clone()));
            }
        }
        for held in held.values() {
            skus.extend(held.lines.iter().map(|line| line.sku.clone()));
        }
        let skus: Vec<String> = skus.into_iter().collect();
        let stock = store::stocks_in(&mut tx, &skus)
            .await?
            .into_iter()
            .map(|row| {
                let levels = row.levels();
                let sku = Sku {
                    read: levels,
                    now: levels,
                    product_id: row.product_id,
                    sold: row.discontinued_at.is_none(),
                };
                (row.sku, sku)
            })
            .collect();

        let mut plan = Plan {
            now,
            held,
            stock,
            created: Vec::new(),
            finished: Vec::new(),
            ledger: Vec::new(),
            events: Vec::new(),
        };
        let mut answers = Vec::with_capacity(commands.len());
        for command in commands {
            answers.push(match command {
                Command::Reserve {
                    order_id,
                    lines,
                    ttl_ms,
                    who,
                    ..
                } => Answer::Reserved(plan.reserve(order_id, lines, *ttl_ms, who)),
                Command::Finish {
                    order_id,
                    to,
                    reason,
                    who,
                    ..
                } => plan.finish(order_id, *to, *reason, who)?,
            });
        }

        // New reservations go in in order-id order, like every lock of the batch, as the batch
        // leaves them: one it created and finished is inserted finished.
        plan.created.sort();
        let created: Vec<ReservationRow> = plan.created.iter().map(|order| plan.held[order].row.clone()).collect();
        let lines: Vec<(&str, &Line)> = plan
            .created
            .iter()
            .flat_map(|order| {
                let held = &plan.held[order];
                held.lines.iter().map(|line| (held.row.id.as_str(), line))
            })
            .collect();
        let finished: Vec<Finish<'_>> = plan
            .finished
            .iter()
            .map(|order| {
                let row = &plan.held[order].row;
                Finish {
                    id: &row.id,
                    status: &row.status,
                    reason: row.release_reason.as_deref(),
                }
            })
            .collect();
        let levels: Vec<LevelChange> = plan
            .stock
            .iter()
            .filter(|(_, sku)| sku.now != sku.read)
            .map(|(name, sku)| LevelChange {
                sku: name.clone(),
                from: sku.read,
                to: sku.now,
            })
            .collect();
        let ledger: Vec<Entry<'_>> = plan.ledger.iter().map(Booked::entry).collect();
        let writes = BatchWrites {
            created: &created,
            lines: &lines,
            finished: &finished,
            levels: &levels,
            ledger: &ledger,
            events: &plan.events,
            now,
        };
        let counts = store::write_batch(&mut tx, &writes).await?;
        anyhow::ensure!(
            counts.finished == finished.len() as u64,
            "a reservation of the batch was finished meanwhile"
        );
        anyhow::ensure!(
            counts.levels == levels.len() as u64,
            "a stock level of the batch moved meanwhile"
        );
        tx.commit().await?;
        Ok(answers)
    }
}

/// A reservation the batch knows: read from the database or created by the batch.
struct Held {
    row: ReservationRow,
    lines: Vec<Line>,
    /// Made by this batch: inserted as the batch leaves it, so never finished by an update.
    created: bool,
}

impl Held {
    fn reservation(&self) -> Result<Reservation, ApiError> {
        Reservation::from_row(self.row.clone(), self.lines.clone())
    }
}

/// A SKU's levels as read and as the batch has left them so far.
struct Sku {
    read: Levels,
    now: Levels,
    product_id: Option<String>,
    sold: bool,
}

impl Sku {
    fn after(&self) -> After {
        After {
            on_hand: self.now.on_hand,
            reserved: self.now.reserved,
            low_stock_threshold: self.now.low_stock_threshold,
            low_stock_alerted: i64::from(self.now.low_stock_alerted),
            product_id: self.product_id.clone(),
        }
    }
}

/// A ledger entry the batch writes (an owned [`Entry`]).
struct Booked {
    sku: String,
    kind: Movement,
    on_hand_delta: i64,
    reserved_delta: i64,
    after: After,
    reason: Option<String>,
    reference: String,
    actor: Option<String>,
    at: i64,
}

impl Booked {
    fn entry(&self) -> Entry<'_> {
        Entry {
            sku: &self.sku,
            kind: self.kind,
            on_hand_delta: self.on_hand_delta,
            reserved_delta: self.reserved_delta,
            after: &self.after,
            reason: self.reason.as_deref(),
            reference: Some(&self.reference),
            actor: self.actor.as_deref(),
            at: self.at,
        }
    }
}

/// What a batch has decided so far.
struct Plan {
    now: i64,
    /// Reservations by order id.
    held: HashMap<String, Held>,
    stock: HashMap<String, Sku>,
    /// Orders whose reservations this batch creates, in order.
    created: Vec<String>,
    /// Orders whose reservations, read by this batch, it finishes, in order.
    finished: Vec<String>,
    ledger: Vec<Booked>,
    events: Vec<Event>,
}

impl Plan {
    fn reserve(&mut self, order_id: &str, lines: &[Line], ttl_ms: i64, who: &Who) -> Result<Reservation, ReserveError> {
        if let Some(held) = self.held.get(order_id) {
            if held.lines != lines {
                return Err(service::other_lines(order_id).into());
            }
            return Ok(held.reservation()?);
        }
        let sellable = |sku: &Sku| if sku.sold { sku.now.available().max(0) } else { 0 };
        let short: Vec<Shortage> = lines
            .iter()
            .filter_map(|line| {
                let available = self.stock.get(&line.sku).map_or(0, sellable);
                (available < line.quantity).then(|| Shortage {
                    sku: line.sku.clone(),
                    requested: line.quantity,
                    available,
                })
            })
            .collect();
        if !short.is_empty() {
            return Err(ReserveError::Short(short));
        }
        let row = ReservationRow {
            id: platform::id::new_id().to_string(),
            order_id: order_id.to_owned(),
            status: ReservationStatus::Active.as_str().to_owned(),
            expires_at: self.now.saturating_add(ttl_ms),
            release_reason: None,
            created_at: self.now,
            updated_at: self.now,
        };
        let moves: Vec<(&Line, i64, i64)> = lines.iter().map(|line| (line, 0, line.quantity)).collect();
        self.move_units(order_id, &moves, Movement::Reserve, None, who);
        let held = Held {
            row,
            lines: lines.to_vec(),
            created: true,
        };
        let reservation = held.reservation()?;
        let event = who.span.in_scope(|| service::reserved_event(&reservation, who.ctx()));
        self.events.push(event);
        self.held.insert(order_id.to_owned(), held);
        self.created.push(order_id.to_owned());
        Ok(reservation)
    }

    /// Commits or releases the order's reservation. `Err` (the whole batch runs alone) when a
    /// SKU holds fewer reserved units than the reservation: the transaction of its own reports
    /// that broken invariant.
    fn finish(
        &mut self,
        order_id: &str,
        to: ReservationStatus,
        reason: Option<ReleaseReason>,
        who: &Who,
    ) -> anyhow::Result<Answer> {
        // Not there when the batch read: either there is none, or another writer (a command
        // running alone, another replica) is inserting it right now. The transaction of its
        // own, after this batch, tells which.
        let Some(held) = self.held.get(order_id) else {
            return Ok(Answer::Alone);
        };
        if held.row.status != ReservationStatus::Active.as_str() {
            return Ok(Answer::Finished(if held.row.status == to.as_str() {
                held.reservation()
            } else {
                Err(service::already_finished(order_id, &held.row.status))
            }));
        }
        let lines = held.lines.clone();
        let sold = to == ReservationStatus::Committed;
        for line in &lines {
            let reserved = self.stock.get(&line.sku).map_or(0, |sku| sku.now.reserved);
            anyhow::ensure!(
                reserved >= line.quantity,
                "SKU {} holds fewer reserved units than order {order_id}'s reservation",
                line.sku
            );
        }
        let moves: Vec<(&Line, i64, i64)> = lines
            .iter()
            .map(|line| (line, if sold { -line.quantity } else { 0 }, -line.quantity))
            .collect();
        let (kind, reason_text) = if sold {
            (Movement::Commit, None)
        } else {
            (Movement::Release, reason.map(ReleaseReason::as_str))
        };
        self.move_units(order_id, &moves, kind, reason_text, who);
        let held = self.held.get_mut(order_id).expect("the reservation was found above");
        held.row.status = to.as_str().to_owned();
        held.row.release_reason = reason_text.map(str::to_owned);
        held.row.updated_at = self.now;
        if !held.created {
            self.finished.push(order_id.to_owned());
        }
        let reservation = held.reservation();
        let event = who
            .span
            .in_scope(|| service::finished_event(&held.row, &held.lines, to, reason_text, who.ctx()));
        self.events.push(event);
        Ok(Answer::Finished(reservation))
    }

    /// Moves each line's units by (on hand, reserved) deltas: the ledger entries first, then
    /// what each SKU's change announces, as a transaction of its own writes them.
    fn move_units(
        &mut self,
        order_id: &str,
        moves: &[(&Line, i64, i64)],
        kind: Movement,
        reason: Option<&str>,
        who: &Who,
    ) {
        let mut moved = Vec::with_capacity(moves.len());
        for &(line, on_hand_delta, reserved_delta) in moves {
            let Some(sku) = self.stock.get_mut(&line.sku) else {
                continue;
            };
            moved.push((line, sku.now));
            sku.now.on_hand += on_hand_delta;
            sku.now.reserved += reserved_delta;
            self.ledger.push(Booked {
                sku: line.sku.clone(),
                kind,
                on_hand_delta,
                reserved_delta,
                after: sku.after(),
                reason: reason.map(str::to_owned),
                reference: order_id.to_owned(),
                actor: who.actor.clone(),
                at: self.now,
            });
        }
        for (line, before) in moved {
            let Some(sku) = self.stock.get_mut(&line.sku) else {
                continue;
            };
            let (events, alerted) = who.span.in_scope(|| {
                service::signal_events(&line.sku, &before, &sku.now, sku.product_id.as_deref(), who.ctx())
            });
            self.events.extend(events);
            if let Some(alerted) = alerted {
                sku.now.low_stock_alerted = alerted;
            }
        }
    }
}
