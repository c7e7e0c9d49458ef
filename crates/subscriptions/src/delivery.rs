//! Delivery of queued notifications (docs/subscriptions.md, "Delivery"):
//! one task per destination takes the oldest notifications from the outbox,
//! sends them as one notification, and deletes them only once the receiver
//! acknowledged (a 2xx answer). A failure keeps them, waits (0.5 s doubling
//! to 30 s) and tries again, so they arrive in order and none is lost,
//! whatever happens to the receiver or to fhirbox (kill -9 included: what
//! was not acknowledged is still in the outbox at the next start).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fhirbox_store::{Outbox, OutboxLease, OutboxRow, ResourceRead, Store, WriteOutcome};
use serde_json::{json, Value};

use crate::destination::{header_line, Header, Kind, Webhook};
use crate::registry::{Live, Registry};
pub use crate::stats::Stats;

/// How often a worker looks for notifications queued through another
/// instance (its own instance's writes wake it at once).
const POLL: Duration = Duration::from_millis(250);
/// The first wait after a failure, doubled after each until [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a worker keeps its lease with nothing to send.
const IDLE_RELEASE: Duration = Duration::from_secs(5);
/// How often the notifications of deleted destinations are looked for.
const CLEANUP_EVERY: Duration = Duration::from_secs(5);
/// The most notifications a best-effort destination keeps in memory; more
/// are lost (and counted).
const MEMORY_QUEUE: usize = 10_000;

/// What delivery reports to the server's metrics. Destination ids are
/// labels: an operator configures them, so they are few.
pub trait DeliveryEvents: Send + Sync {
    /// An attempt to deliver a batch ended (`ok`: acknowledged).
    fn attempt(&self, destination: &str, ok: bool);
    /// Notifications were acknowledged, each this many seconds after its
    /// change was stored.
    fn delivered(&self, destination: &str, seconds_since_change: &[f64]);
    /// Best-effort notifications were dropped.
    fn lost(&self, destination: &str, count: u64);
}

/// Reports nothing.
pub struct NoEvents;

impl DeliveryEvents for NoEvents {
    fn attempt(&self, _destination: &str, _ok: bool) {}
    fn delivered(&self, _destination: &str, _seconds_since_change: &[f64]) {}
    fn lost(&self, _destination: &str, _count: u64) {}
}

/// A best-effort destination's notifications, waiting in memory.
#[derive(Default)]
struct MemoryQueue {
    items: Mutex<VecDeque<OutboxRow>>,
    wake: tokio::sync::Notify,
    /// The last event number given (per destination, since the start).
    numbered: AtomicI64,
}

/// Tells the supervisor and the workers to stop, and counts the workers
/// still running.
#[derive(Default)]
struct Stop {
    asked: std::sync::atomic::AtomicBool,
    signal: tokio::sync::Notify,
    running: std::sync::atomic::AtomicUsize,
}

impl Stop {
    fn asked(&self) -> bool {
        self.asked.load(Ordering::SeqCst)
    }

    /// Returns once stopping is asked.
    async fn stopped(&self) {
        loop {
            let stopping = self.signal.notified();
            tokio::pin!(stopping);
            stopping.as_mut().enable();
            if self.asked() {
                return;
            }
            stopping.await;
        }
    }

    /// Sleeps for `duration`, or less if stopping is asked meanwhile.
    async fn pause(&self, duration: Duration) {
        let stopping = self.signal.notified();
        tokio::pin!(stopping);
        stopping.as_mut().enable();
        if self.asked() {
            return;
        }
        tokio::select! {
            () = stopping => {}
            () = tokio::time::sleep(duration) => {}
        }
    }
}

/// A running worker, counted until it ends.
struct Running(Arc<Stop>);

impl Running {
    fn new(stop: &Arc<Stop>) -> Running {
        stop.running.fetch_add(1, Ordering::SeqCst);
        Running(stop.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The delivery side of subscriptions: the workers and their counters.
pub struct Delivery {
    stop: Arc<Stop>,
    events: Arc<dyn DeliveryEvents>,
    registry: Arc<Registry>,
    store: Store,
    /// External secrets (referenced `header` parameters); `None` when off.
    vault: Option<fhirbox_secrets::SecretResolver>,
    base: Option<String>,
    started: SystemTime,
    stats: Mutex<HashMap<String, Arc<Stats>>>,
    memory: Mutex<HashMap<String, Arc<MemoryQueue>>>,
    written: Mutex<Written>,
}

/// The bodies of versions this instance wrote lately with notifications
/// queued, so sending those need not read them back (bounded, oldest out).
#[derive(Default)]
struct Written {
    bodies: HashMap<(String, String, i64), Arc<str>>,
    order: VecDeque<(String, String, i64)>,
    bytes: usize,
}

impl Written {
    /// Keeps `stored`'s body, letting the oldest go beyond `most` bodies or
    /// `most_bytes` bytes.
    fn keep(&mut self, key: (String, String, i64), body: Arc<str>, most: usize, most_bytes: usize) {
        // One large body does not push out all the others.
        if body.len() > most_bytes / 16 || self.bodies.contains_key(&key) {
            return;
        }
        self.bytes += body.len();
        self.bodies.insert(key.clone(), body);
        self.order.push_back(key);
        while self.order.len() > most || self.bytes > most_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(body) = self.bodies.remove(&oldest) {
                self.bytes -= body.len();
            }
        }
    }

    fn get(&self, resource_type: &str, id: &str, version: i64) -> Option<Arc<str>> {
        self.bodies
            .get(&(resource_type.to_owned(), id.to_owned(), version))
            .cloned()
    }
}

/// The most bodies, and bytes of them, [`Written`] keeps.
const WRITTEN_MAX: usize = 4096;
const WRITTEN_MAX_BYTES: usize = 16 << 20;

impl Delivery {
    pub fn new(
        registry: Arc<Registry>,
        store: Store,
        vault: Option<fhirbox_secrets::SecretResolver>,
        base: Option<String>,
        events: Arc<dyn DeliveryEvents>,
    ) -> Delivery {
        Delivery {
            stop: Arc::new(Stop::default()),
            events,
            registry,
            store,
            vault,
            base,
            started: SystemTime::now(),
            stats: Mutex::new(HashMap::new()),
            memory: Mutex::new(HashMap::new()),
            written: Mutex::new(Written::default()),
        }
    }

    /// Stops the workers and waits (up to `within`) until they have given
    /// their leases up: before the store closes, at shutdown. What they
    /// were sending stays queued unless it was acknowledged.
    pub async fn stop(&self, within: Duration) {
        self.stop.asked.store(true, Ordering::SeqCst);
        self.stop.signal.notify_waiters();
        self.registry.wake.notify_waiters();
        let deadline = tokio::time::Instant::now() + within;
        while self.stop.running.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The counters of destination `id` (created on first use).
    pub fn stats(&self, id: &str) -> Arc<Stats> {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn memory_queue(&self, id: &str) -> Arc<MemoryQueue> {
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// After writes committed: their best-effort notifications (those the
    /// store handed back, `WriteOutcome::notifications`) join their
    /// destinations' memory queues, with the versions the writes stored.
    /// One for a destination deleted since is dropped; a full queue loses
    /// the notification (counted).
    pub fn hand_over(&self, outcomes: &[WriteOutcome]) {
        for outcome in outcomes {
            for event in &outcome.notifications {
                self.remember(&outcome.resource, event);
            }
        }
    }

    fn remember(&self, stored: &fhirbox_store::StoredResource, event: &fhirbox_store::OutboxEvent) {
        let id = &event.destination;
        let current = self.registry.destination(id).is_some_and(|live| {
            live.destination.kind == Kind::KafkaBestEffort
                && event.destination_version >= live.since
        });
        if !current {
            return;
        }
        let queue = self.memory_queue(id);
        let mut items = queue.items.lock().unwrap_or_else(|p| p.into_inner());
        if items.len() >= MEMORY_QUEUE {
            drop(items);
            self.stats(id).lost.fetch_add(1, Ordering::Relaxed);
            self.events.lost(id, 1);
            return;
        }
        items.push_back(OutboxRow {
            seq: queue.numbered.fetch_add(1, Ordering::Relaxed) + 1,
            destination: id.clone(),
            destination_version: event.destination_version,
            topic: event.topic.clone(),
            resource_type: stored.resource_type.clone(),
            resource_id: stored.id.clone(),
            version_id: stored.version_id,
            interaction: event.interaction.to_owned(),
            created_at: stored.last_updated,
        });
        drop(items);
        queue.wake.notify_one();
    }

    /// After writes that queued notifications committed: keeps what they
    /// stored, for the notifications' `full-resource` entries.
    pub fn remember_written(&self, outcomes: &[WriteOutcome]) {
        // A large bundle would only push out what waits to be sent.
        if outcomes.len() > WRITTEN_MAX / 4 {
            return;
        }
        // Copied before the lock is taken.
        let bodies: Vec<((String, String, i64), Arc<str>)> = outcomes
            .iter()
            .filter(|o| o.changed && !o.resource.deleted)
            .map(|o| {
                let r = &o.resource;
                (
                    (r.resource_type.clone(), r.id.clone(), r.version_id),
                    Arc::from(r.body.as_str()),
                )
            })
            .collect();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        for (key, body) in bodies {
            written.keep(key, body, WRITTEN_MAX, WRITTEN_MAX_BYTES);
        }
    }

    /// The body of a version [`Delivery::remember_written`] kept.
    fn written(&self, row: &OutboxRow) -> Option<Arc<str>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner()).get(
            &row.resource_type,
            &row.resource_id,
            row.version_id,
        )
    }

    /// Counts `rows` as delivered (acknowledged by the receiver).
    fn acknowledged(&self, id: &str, stats: &Stats, rows: &[OutboxRow]) {
        stats
            .delivered
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        let now = fhirbox_store::instant::now_micros();
        let ages: Vec<f64> = rows
            .iter()
            .map(|r| (now - r.created_at).max(0) as f64 / 1e6)
            .collect();
        self.events.attempt(id, true);
        self.events.delivered(id, &ages);
    }

    /// Every destination's counters, by id.
    pub fn all_stats(&self) -> Vec<(String, Arc<Stats>)> {
        let mut all: Vec<(String, Arc<Stats>)> = self
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// `$status` of destination `id` as a `Parameters` resource; `None`
    /// when no such destination is stored.
    pub async fn status(&self, id: &str) -> Result<Option<Value>, fhirbox_store::StoreError> {
        let live = self.registry.destination(id);
        let problem = self.registry.problem(id);
        if live.is_none() && problem.is_none() {
            return Ok(None);
        }
        let stats = self.stats(id);
        let best_effort = live
            .as_ref()
            .is_some_and(|l| l.destination.kind == Kind::KafkaBestEffort);
        let status = match (&live, &problem) {
            (_, Some(_)) => "error",
            (Some(l), None) if !l.destination.active => "off",
            _ => "active",
        };
        let count = |n: u64| json!(n);
        let mut in_process = stats.in_process.load(Ordering::Relaxed);
        // Best effort: what waits in memory; at least once: the outbox.
        let (name, value) = if best_effort {
            let waiting = self
                .memory_queue(id)
                .items
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len();
            in_process += waiting as u64;
            ("messagesLost", stats.lost.load(Ordering::Relaxed))
        } else {
            let queued = self.store.count_events(id).await?;
            ("messagesQueued", u64::try_from(queued).unwrap_or(0))
        };
        let mut parameters = vec![
            json!({"name": "messagesDelivered", "valueDecimal": count(stats.delivered.load(Ordering::Relaxed))}),
            json!({"name": "messagesDeliveryAttempts", "valueDecimal": count(stats.attempts.load(Ordering::Relaxed))}),
            json!({"name": "messagesInProcess", "valueDecimal": count(in_process)}),
            json!({"name": name, "valueDecimal": count(value)}),
            json!({"name": "startTimestamp", "valueDateTime": instant(self.started)}),
            json!({"name": "status", "valueString": status}),
        ];
        let error = problem
            .map(|p| (p, SystemTime::now()))
            .or_else(|| stats.last_error());
        if let Some((message, at)) = error {
            parameters.push(json!({"name": "lastErrorDetail", "part": [
                {"name": "message", "valueString": message},
                {"name": "timestamp", "valueDateTime": instant(at)}]}));
        }
        Ok(Some(
            json!({"resourceType": "Parameters", "parameter": parameters}),
        ))
    }
}

impl Delivery {
    /// After destination `id` was deleted by its version `version`: what
    /// was queued for its earlier versions goes with it.
    pub async fn deleted(&self, id: &str, version: i64) {
        // What waited in memory for it goes too.
        self.memory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        match self.store.drop_events(id, version).await {
            Ok(0) => {}
            Ok(dropped) => {
                tracing::info!(destination = %id, dropped, "notifications of a deleted destination removed from the outbox");
            }
            Err(e) => {
                tracing::warn!(destination = %id, error = %e, "could not remove the notifications of a deleted destination; retried later")
            }
        }
    }

    /// Removes the queued notifications of deleted destinations: those
    /// queued for the versions before the deletion (a destination created
    /// again under the same id keeps what was queued for it since; a
    /// worker drops what is older than its destination's creation).
    async fn forget_deleted(&self) {
        let queued = match self.store.queued_destinations().await {
            Ok(queued) => queued,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the subscription outbox");
                return;
            }
        };
        for id in queued {
            if self.registry.destination(&id).is_some() {
                continue;
            }
            let Ok(Some(stored)) = self.store.read("AidboxTopicDestination", &id).await else {
                continue;
            };
            if !stored.deleted {
                continue;
            }
            self.deleted(&id, stored.version_id).await;
        }
    }
}

fn instant(at: SystemTime) -> String {
    let micros = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    fhirbox_store::instant::format_micros(micros)
}

/// Starts the supervisor that keeps one worker per delivered destination.
/// The supervisor and the workers hold the delivery weakly: they end when
/// the server that owns it is dropped.
pub fn spawn(delivery: &Arc<Delivery>) {
    let weak = Arc::downgrade(delivery);
    let registry = delivery.registry.clone();
    let stop = delivery.stop.clone();
    tokio::spawn(async move {
        let _running = Running::new(&stop);
        let mut workers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut last_cleanup = std::time::Instant::now()
            .checked_sub(CLEANUP_EVERY)
            .unwrap_or_else(std::time::Instant::now);
        loop {
            let changed = registry.wake.notified();
            workers.retain(|_, handle| !handle.is_finished());
            if weak.strong_count() == 0 || stop.asked() {
                break;
            }
            if last_cleanup.elapsed() >= CLEANUP_EVERY {
                if let Some(delivery) = weak.upgrade() {
                    delivery.forget_deleted().await;
                }
                last_cleanup = std::time::Instant::now();
            }
            for live in registry.delivered() {
                if !workers.contains_key(&live.id) {
                    let (weak, registry, stop, id) = (
                        weak.clone(),
                        registry.clone(),
                        stop.clone(),
                        live.id.clone(),
                    );
                    let task = if live.destination.kind.is_delivered() {
                        tokio::spawn(work(weak, registry, stop, id))
                    } else {
                        tokio::spawn(work_best_effort(weak, registry, stop, id))
                    };
                    workers.insert(live.id.clone(), task);
                }
            }
            tokio::select! {
                () = changed => {}
                () = stop.pause(Duration::from_secs(1)) => {}
            }
        }
    });
}

/// The most notifications one Kafka send publishes (one message each).
const KAFKA_BATCH: usize = 100;

/// What sends a destination's notifications: its webhook client, or its
/// Kafka producer.
enum Sender {
    Webhook(Client),
    Kafka(crate::kafka::Publisher),
}

/// The webhook client of one version of a destination.
struct Client {
    version: i64,
    http: reqwest::Client,
}

fn client(live: &Live, webhook: &Webhook) -> Result<Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(webhook.timeout_secs.max(1)))
        .connect_timeout(Duration::from_secs(webhook.timeout_secs.clamp(1, 10)))
        // A notification goes where the destination says, never elsewhere.
        .redirect(reqwest::redirect::Policy::none());
    builder = match webhook.keep_alive_secs {
        Some(secs) => builder.pool_idle_timeout(Duration::from_secs(secs)),
        None => builder.pool_max_idle_per_host(0),
    };
    let http = builder
        .build()
        .map_err(|_| "the HTTP client could not be built".to_owned())?;
    Ok(Client {
        version: live.version,
        http,
    })
}

/// Waits for a write of this instance (`woken`), the poll interval, or
/// the stop.
async fn idle(woken: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>, stop: &Stop) {
    tokio::select! {
        () = woken => {}
        () = stop.pause(POLL) => {}
    }
}

/// Delivers destination `id` until it is no longer delivered (or the
/// server is gone). It takes the destination's lease once and keeps it
/// while it delivers; another instance's worker waits for it.
async fn work(
    weak: std::sync::Weak<Delivery>,
    registry: Arc<Registry>,
    stop: Arc<Stop>,
    id: String,
) {
    let _running = Running::new(&stop);
    let mut backoff = FIRST_BACKOFF;
    let mut sender: Option<Sender> = None;
    let mut lease: Option<OutboxLease> = None;
    let mut idle_since: Option<std::time::Instant> = None;
    tracing::info!(destination = %id, "subscription delivery started");
    loop {
        if stop.asked() {
            break;
        }
        let Some(delivery) = weak.upgrade() else {
            break;
        };
        let stats = delivery.stats(&id);
        let Some(live) = registry
            .destination(&id)
            .filter(|l| l.destination.active && l.destination.kind.is_delivered())
        else {
            break;
        };
        let max_batch = match (&live.destination.webhook, &live.destination.kafka) {
            (Some(webhook), _) => webhook.max_batch,
            (None, Some(_)) => KAFKA_BATCH,
            (None, None) => break,
        };
        // Listen before looking, so a write that lands in between is not missed.
        let woken = registry.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if lease.is_none() {
            // Without the lease, a cheap look first: a lease (a connection
            // on PostgreSQL) is taken only when there is something to send.
            match delivery.store.has_events(&id).await {
                Ok(true) => {}
                Ok(false) => {
                    drop(delivery);
                    idle(woken, &stop).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(destination = %id, error = %e, "could not read the subscription outbox");
                    stats.failed("the outbox could not be read".into());
                    drop(delivery);
                    stop.pause(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
        }
        let held = match &mut lease {
            Some(held) => held,
            None => match delivery.store.lease(&id).await {
                Ok(Some(taken)) => lease.insert(taken),
                Ok(None) => {
                    // Another instance delivers this destination.
                    drop(delivery);
                    idle(woken, &stop).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(destination = %id, error = %e, "could not take the subscription outbox lease");
                    stats.failed("the outbox could not be read".into());
                    drop(delivery);
                    stop.pause(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        let rows = match held.next(max_batch).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(destination = %id, error = %e, "could not read the subscription outbox");
                stats.failed("the outbox could not be read".into());
                lease = None;
                drop(delivery);
                stop.pause(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        // Queued for a destination of this id that was deleted since.
        let (stale, rows): (Vec<OutboxRow>, Vec<OutboxRow>) = rows
            .into_iter()
            .partition(|r| r.destination_version < live.since);
        if !stale.is_empty() {
            let seqs: Vec<i64> = stale.iter().map(|r| r.seq).collect();
            if held.acknowledge(&seqs).await.is_err() {
                lease = None;
                drop(delivery);
                stop.pause(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            } else {
                tracing::info!(destination = %id, dropped = seqs.len(), "notifications queued for a deleted destination of this id dropped");
            }
            continue;
        }
        if rows.is_empty() {
            // Idle for a while: let the lease (and its connection) go.
            let since = *idle_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= IDLE_RELEASE {
                if let Some(held) = lease.take() {
                    held.release().await;
                }
                idle_since = None;
            }
            drop(delivery);
            idle(woken, &stop).await;
            continue;
        }
        idle_since = None;
        // Queued for a version of the destination this instance has not
        // loaded yet (changed through another instance): catch up first,
        // so they go where that version says.
        if rows.iter().any(|r| r.destination_version > live.version) {
            let caught_up = registry
                .reload_if_changed(&delivery.store)
                .await
                .unwrap_or(false);
            if !caught_up {
                drop(delivery);
                stop.pause(POLL).await;
            }
            continue;
        }
        // One notification names one topic: a batch stops where the
        // destination's topic changed.
        let mut rows = rows;
        let same_topic = rows.iter().take_while(|r| r.topic == rows[0].topic).count();
        rows.truncate(same_topic);
        let count = rows.len() as u64;
        stats.in_process.store(count, Ordering::Relaxed);
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let sent = tokio::select! {
            sent = delivery.send(&live, &rows, &mut sender, &stats) => sent,
            // At shutdown, a send in progress stays queued.
            () = stop.stopped() => {
                stats.in_process.store(0, Ordering::Relaxed);
                break;
            }
        };
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        match sent {
            Ok(()) => match held.acknowledge(&seqs).await {
                Ok(()) => {
                    delivery.acknowledged(&id, &stats, &rows);
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    // Delivered, but still queued: sent again (at least once).
                    tracing::warn!(destination = %id, error = %e, "delivered notifications could not be removed from the outbox; they will be sent again");
                    stats.failed(
                        "delivered notifications could not be removed from the outbox".into(),
                    );
                    lease = None;
                    stats.in_process.store(0, Ordering::Relaxed);
                    drop(delivery);
                    stop.pause(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
            Err(message) => {
                delivery.events.attempt(&id, false);
                tracing::warn!(destination = %id, problem = %message, retry_in_ms = backoff.as_millis() as u64, "subscription delivery failed; retrying");
                stats.failed(message);
                stats.in_process.store(0, Ordering::Relaxed);
                drop(delivery);
                stop.pause(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        stats.in_process.store(0, Ordering::Relaxed);
    }
    if let Some(held) = lease {
        held.release().await;
    }
    tracing::info!(destination = %id, "subscription delivery stopped");
}

/// Delivers best-effort destination `id` from its memory queue: each batch
/// is sent once (the Kafka client retries within `deliveryTimeoutMs`); a
/// failed one is lost and counted. Nothing survives a restart.
async fn work_best_effort(
    weak: std::sync::Weak<Delivery>,
    registry: Arc<Registry>,
    stop: Arc<Stop>,
    id: String,
) {
    let _running = Running::new(&stop);
    let mut sender: Option<Sender> = None;
    let mut backoff = FIRST_BACKOFF;
    tracing::info!(destination = %id, "best-effort subscription delivery started");
    loop {
        if stop.asked() {
            break;
        }
        let Some(delivery) = weak.upgrade() else {
            break;
        };
        let Some(live) = registry
            .destination(&id)
            .filter(|l| l.destination.active && l.destination.kind == Kind::KafkaBestEffort)
        else {
            break;
        };
        let queue = delivery.memory_queue(&id);
        let rows: Vec<OutboxRow> = {
            let mut items = queue.items.lock().unwrap_or_else(|p| p.into_inner());
            let n = items.len().min(KAFKA_BATCH);
            items
                .drain(..n)
                // Not for a destination of this id deleted since.
                .filter(|r| r.destination_version >= live.since)
                .collect()
        };
        if rows.is_empty()
            && !queue
                .items
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        {
            continue;
        }
        if rows.is_empty() {
            drop(delivery);
            tokio::select! {
                () = queue.wake.notified() => {}
                () = stop.pause(POLL) => {}
            }
            continue;
        }
        let stats = delivery.stats(&id);
        let count = rows.len() as u64;
        stats.in_process.store(count, Ordering::Relaxed);
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let sent = tokio::select! {
            sent = delivery.send(&live, &rows, &mut sender, &stats) => sent,
            () = stop.stopped() => break,
        };
        stats.in_process.store(0, Ordering::Relaxed);
        match sent {
            Ok(()) => {
                delivery.acknowledged(&id, &stats, &rows);
                backoff = FIRST_BACKOFF;
            }
            Err(message) => {
                tracing::warn!(destination = %id, problem = %message, lost = count, "best-effort notifications lost");
                stats.failed(message);
                stats.lost.fetch_add(count, Ordering::Relaxed);
                delivery.events.attempt(&id, false);
                delivery.events.lost(&id, count);
                // A broken credential or an unreachable broker: not a new
                // client for every batch (what waits meanwhile is bounded).
                drop(delivery);
                stop.pause(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::info!(destination = %id, "best-effort subscription delivery stopped");
}

impl Delivery {
    /// Sends `rows` (queued for `live`, one topic) and waits for the
    /// receiver's acknowledgment; `sender` is the client kept between
    /// sends, built again when the destination's version or (Kafka) its
    /// credentials changed.
    async fn send(
        &self,
        live: &Live,
        rows: &[OutboxRow],
        sender: &mut Option<Sender>,
        stats: &Arc<Stats>,
    ) -> Result<(), String> {
        let unreadable = |e: fhirbox_store::StoreError| {
            tracing::warn!(destination = %live.id, error = %e, "could not read the changed resources");
            "the changed resources could not be read".to_owned()
        };
        let base = self.base.as_deref();
        if let Some(webhook) = &live.destination.webhook {
            if !matches!(sender, Some(Sender::Webhook(c)) if c.version == live.version) {
                *sender = Some(Sender::Webhook(client(live, webhook)?));
            }
            let Some(Sender::Webhook(client)) = sender.as_ref() else {
                return Err("the HTTP client could not be built".into());
            };
            let bundle =
                crate::notification::bundle(&self.store, live, rows, base, &|r| self.written(r))
                    .await
                    .map_err(unreadable)?;
            let headers = self.headers(live, webhook)?;
            return post(client, webhook, headers, &bundle).await;
        }
        let Some(kafka) = &live.destination.kafka else {
            return Err("this destination's kind is not delivered".into());
        };
        let credentials = self.kafka_credentials(live, kafka)?;
        if !matches!(sender, Some(Sender::Kafka(p)) if p.fits(live.version, &credentials)) {
            // The old producer (its queue purged) goes before the new one
            // comes; building one starts threads and reads certificates:
            // off the runtime's threads.
            *sender = None;
            let (id, version, settings, stats) =
                (live.id.clone(), live.version, kafka.clone(), stats.clone());
            let publisher = tokio::task::spawn_blocking(move || {
                crate::kafka::Publisher::new(&id, version, &settings, &credentials, stats)
            })
            .await
            .map_err(|_| "the Kafka client could not be built".to_owned())??;
            *sender = Some(Sender::Kafka(publisher));
        }
        let Some(Sender::Kafka(publisher)) = sender.as_ref() else {
            return Err("the Kafka client could not be built".into());
        };
        // One message per change, keyed by the resource.
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            let bundle = crate::notification::bundle(
                &self.store,
                live,
                std::slice::from_ref(row),
                base,
                &|r| self.written(r),
            )
            .await
            .map_err(unreadable)?;
            messages.push(crate::kafka::Message {
                key: format!("{}/{}", row.resource_type, row.resource_id),
                payload: bundle.to_string(),
                timestamp_ms: row.created_at / 1000,
            });
        }
        let published = publisher.publish(kafka, &messages).await;
        if published.is_err() {
            // A fresh producer for the next attempt (after an
            // authentication failure, the old one keeps failing).
            *sender = None;
        }
        published
    }

    /// The credentials of a Kafka send: literal ones as written, referenced
    /// ones read from the vault now (with the secret's scope), so a rotated
    /// file applies to the next send. The error names the secret and what
    /// is wrong, never the value.
    fn kafka_credentials(
        &self,
        live: &Live,
        kafka: &crate::destination::Kafka,
    ) -> Result<crate::kafka::Credentials, String> {
        let read = |parameter: &str,
                    credential: &crate::destination::Credential|
         -> Result<secrecy::SecretString, String> {
            match credential {
                crate::destination::Credential::Literal(text) => Ok(text.clone().into()),
                crate::destination::Credential::Vault(secret) => {
                    self.secret(live, &format!("{parameter} secret {secret:?}"), secret)
                }
            }
        };
        let mut credentials = crate::kafka::Credentials {
            username: None,
            password: None,
            key: None,
            certificate: None,
        };
        if let Some(jaas) = &kafka.jaas {
            let text = read("saslJaasConfig", jaas)?;
            let parsed = crate::jaas::parse(secrecy::ExposeSecret::expose_secret(&text))
                .map_err(|e| format!("saslJaasConfig {e}"))?;
            if !parsed.module.fits(kafka.mechanism.as_deref()) {
                return Err("saslJaasConfig's login module does not fit saslMechanism".into());
            }
            credentials.username = Some(parsed.username);
            credentials.password = Some(parsed.password);
        }
        if let Some(key) = &kafka.key {
            let pem = read("sslKeystoreKey", key)?;
            // The key's PEM may carry the client's certificates after it.
            let (key, certificates) =
                crate::kafka::split_pem(secrecy::ExposeSecret::expose_secret(&pem));
            if !key.contains("PRIVATE KEY-----") || key.contains("ENCRYPTED") {
                return Err("sslKeystoreKey is not an unencrypted PEM private key".into());
            }
            if certificates.is_empty() && kafka.certificate.is_none() {
                return Err("sslKeystoreKey has no certificate: put the client's certificate after the key, or in sslKeystoreCertificateChain".into());
            }
            credentials.key = Some(key.into());
            credentials.certificate = (!certificates.is_empty()).then_some(certificates);
        }
        Ok(credentials)
    }

    /// The text of vault secret `secret`, read now with destination
    /// `live`'s scope. The error (`what` names the parameter and the
    /// secret) gives the reason only: `$status` is readable beyond root; the
    /// log gets the paths and scopes too.
    fn secret(
        &self,
        live: &Live,
        what: &str,
        secret: &str,
    ) -> Result<secrecy::SecretString, String> {
        let vault = self.vault.as_ref().ok_or_else(|| {
            format!("{what} cannot be read: external secrets are off (BOX_VAULT_CONFIG)")
        })?;
        let unusable = |e: fhirbox_secrets::SecretError| {
            tracing::warn!(destination = %live.id, secret = what, error = %e, "a destination's secret cannot be used");
            format!(
                "{what} cannot be used ({}; details in the server log)",
                e.reason()
            )
        };
        let requester = fhirbox_secrets::Requester::new("AidboxTopicDestination", &live.id);
        let value = vault.resolve(secret, &requester).map_err(unusable)?;
        let text = value.expose_utf8().map_err(unusable)?;
        Ok(text.to_owned().into())
    }

    /// The headers of a delivery: literal ones as written, referenced ones
    /// read from the vault now (with the secret's scope), so a rotated file
    /// applies to the next delivery. The error names the secret and what is
    /// wrong, never the value.
    fn headers(
        &self,
        live: &Live,
        webhook: &Webhook,
    ) -> Result<Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>, String> {
        let mut out = Vec::with_capacity(webhook.headers.len());
        for header in &webhook.headers {
            let (name, value, sensitive, what) = match header {
                Header::Literal(name, value) => {
                    (name.clone(), value.clone(), false, format!("header {name}"))
                }
                Header::Vault(secret) => {
                    let what = format!("header secret {secret:?}");
                    let line = self.secret(live, &what, secret)?;
                    let (name, value) = header_line(secrecy::ExposeSecret::expose_secret(&line))
                        .map_err(|e| format!("{what}: {e}"))?;
                    (name.to_owned(), value.to_owned(), true, what)
                }
            };
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{what} has a name that cannot be sent"))?;
            let mut value = reqwest::header::HeaderValue::from_str(&value).map_err(|_| {
                format!("{what} has a value that cannot be sent (not visible ASCII)")
            })?;
            value.set_sensitive(sensitive);
            out.push((name, value));
        }
        Ok(out)
    }
}

/// Posts one notification; the error says what went wrong without the
/// endpoint (its query may carry a key), a credential or the answer's body.
async fn post(
    client: &Client,
    webhook: &Webhook,
    headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    bundle: &Value,
) -> Result<(), String> {
    let mut request = client
        .http
        .post(&webhook.endpoint)
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(answer) if answer.status().is_success() => Ok(()),
        Ok(answer) => Err(format!(
            "the endpoint answered HTTP {}",
            answer.status().as_u16()
        )),
        Err(e) if e.is_timeout() => Err(format!(
            "the endpoint did not answer within {} s",
            webhook.timeout_secs
        )),
        Err(e) if e.is_connect() => Err("could not connect to the endpoint".into()),
        Err(e) if e.is_builder() => {
            Err("the request could not be built (check the header parameters)".into())
        }
        Err(_) => Err("the request to the endpoint failed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::Written;

    fn keep(written: &mut Written, id: &str, body: &str, most: usize, most_bytes: usize) {
        written.keep(
            ("Patient".into(), id.into(), 1),
            body.into(),
            most,
            most_bytes,
        );
    }

    #[test]
    fn written_bodies_are_bounded_by_count_and_bytes_oldest_out() {
        let mut written = Written::default();
        for i in 0..5 {
            keep(&mut written, &format!("p{i}"), "0123456789", 3, 1000);
        }
        assert_eq!(written.bodies.len(), 3);
        assert!(written.get("Patient", "p1", 1).is_none());
        assert_eq!(
            written.get("Patient", "p4", 1).as_deref(),
            Some("0123456789")
        );
        assert!(written.get("Patient", "p4", 2).is_none());
        // The same version twice is kept once.
        keep(&mut written, "p4", "0123456789", 3, 1000);
        assert_eq!(
            (written.bodies.len(), written.order.len(), written.bytes),
            (3, 3, 30)
        );
        // Bytes: the oldest go until the total fits.
        let mut written = Written::default();
        for i in 0..20 {
            keep(&mut written, &format!("q{i}"), "0123456789", 100, 160);
        }
        assert_eq!((written.bodies.len(), written.bytes), (16, 160));
        assert!(written.get("Patient", "q3", 1).is_none());
        assert!(written.get("Patient", "q4", 1).is_some());
        // A body over a sixteenth of the bytes allowed is not kept.
        keep(&mut written, "big", &"z".repeat(11), 100, 160);
        assert!(written.get("Patient", "big", 1).is_none());
        assert_eq!(written.bytes, 160);
    }
}
