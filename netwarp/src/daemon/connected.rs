//! One Docker connection's life: the event reader, the debounce, the
//! periodic resync, signals and reloads, and a reconcile pass after each.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bollard::{Docker, models::EventMessage};
use futures_util::StreamExt as _;
use tokio::sync::Notify;
use tracing::{Instrument as _, debug, error, info, warn};

use super::{Signals, shutdown};
use crate::{
    config::Config,
    docker,
    model::ContainerId,
    pass::{Pending, Reconciler},
    telemetry::ReloadView,
};

/// Coalescing window: passes for events start at most this often (see
/// [`debounce_wait`]).
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Why the event loop stopped.
pub(super) enum LoopExit {
    Shutdown,
    ConnectionLost(String),
}

/// Re-reads the configuration from the same sources (for SIGHUP).
pub type Reload = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// The most distinct containers pending at once; past it (a storm over
/// more containers than a host runs) the ids are dropped and the next pass
/// re-inspects everything.
const PENDING_MAX: usize = 65_536;

/// The event reader only forwards "something changed", with the event's
/// own time for latency measurements; it never carries state.
struct EventReader {
    /// Ends with the reason the stream stopped.
    task: tokio::task::JoinHandle<String>,
    /// Container ids events named, with the first event's time, coalesced
    /// as they arrive: a storm grows this by containers, not by events, so
    /// no event is lost to a full queue while a pass runs. Ids are
    /// fixed-size values: an event allocates nothing that stays.
    dirty: Arc<Dirty>,
}

#[derive(Default)]
struct Dirty {
    ids: Mutex<Pending>,
    /// Set when an id was dropped at [`PENDING_MAX`].
    overflowed: AtomicBool,
    arrived: Notify,
}

impl Dirty {
    /// An event naming `id` (as Docker wrote it; not a full id: the next
    /// pass lists everything).
    fn add(&self, id: &str, at: SystemTime) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        match ContainerId::parse(id) {
            Ok(id) if ids.len() >= PENDING_MAX && !ids.contains(&id) => {
                self.overflowed.store(true, Ordering::Relaxed);
            }
            Ok(id) => ids.add(id, at),
            Err(_) => ids.add_unnamed(at),
        }
        drop(ids);
        self.arrived.notify_one();
    }

    /// Moves every pending id into `pending` (keeping the earlier time).
    fn drain_into(&self, pending: &mut Pending) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        pending.take_from(&mut ids);
    }

    fn is_empty(&self) -> bool {
        (self.ids.lock().unwrap_or_else(|e| e.into_inner())).is_empty()
    }
}

impl EventReader {
    fn spawn(client: &Docker, metrics: crate::telemetry::Metrics) -> Self {
        let dirty = Arc::new(Dirty::default());
        let reader_dirty = Arc::clone(&dirty);
        let events = docker::events(client);
        let task = tokio::spawn(async move {
            let ended = read(events, &reader_dirty, &metrics).await;
            // Wakes the loop, which then finds the reader finished.
            reader_dirty.arrived.notify_one();
            ended
        });
        Self { task, dirty }
    }
}

/// Forwards events until the stream ends; returns why it ended.
async fn read<S>(mut events: S, dirty: &Dirty, metrics: &crate::telemetry::Metrics) -> String
where
    S: futures_util::Stream<Item = Result<EventMessage, bollard::errors::Error>> + Unpin,
{
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => return e.to_string(),
        };
        let kind = event.typ.map(|t| t.to_string()).unwrap_or_default();
        metrics.docker_event(&kind, event.action.as_deref().unwrap_or_default());
        // A network event's actor is the network; the container it
        // concerns is an attribute.
        let actor = event.actor.as_ref();
        let id = (actor.and_then(|a| a.attributes.as_ref()?.get("container")))
            .or_else(|| actor?.id.as_ref())
            .map_or("", String::as_str);
        debug!(action = event.action.as_deref().unwrap_or(""), container = %id, "docker event");
        // Docker's own timestamp, so latency covers the whole path.
        let at = event
            .time_nano
            .and_then(|n| u64::try_from(n).ok())
            .map_or_else(SystemTime::now, |n| UNIX_EPOCH + Duration::from_nanos(n));
        dirty.add(id, at);
    }
    "the event stream ended".to_owned()
}

pub(super) async fn run_connected(
    client: &docker::Client,
    config: &Config,
    reconciler: &mut Reconciler,
    signals: &mut Signals,
    reload: &Reload,
) -> LoopExit {
    reconciler.reconnected();
    let metrics = reconciler.telemetry_mut().metrics().clone();
    let EventReader {
        task: reader,
        dirty,
    } = EventReader::spawn(client, metrics);
    let mut resync = tokio::time::interval(config.resync_interval);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = Pending::default();
    let mut last_pass: Option<Instant> = None;
    let probe_wakeups = reconciler.probe_wakeups();
    let exit = loop {
        tokio::select! {
            _ = resync.tick() => reconciler.resync_all(),
            () = dirty.arrived.notified() => {
                let wait = debounce_wait(last_pass.map(|t| t.elapsed()));
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                dirty.drain_into(&mut pending);
                let overflowed = dirty.overflowed.load(Ordering::Relaxed);
                if pending.is_empty() && !overflowed && !reader.is_finished() {
                    // A wake-up whose ids an earlier pass already took.
                    continue;
                }
            }
            // A recovered failover member's hold-down ended: the pass
            // below moves its targets back.
            () = sleep_until_deadline(reconciler.next_deadline()) => {}
            () = probe_wakeups.notified() => {
                // A warp's probe verdict changed: its targets are served
                // first, as for a Docker event naming it.
                let now = SystemTime::now();
                for id in probe_wakeups.drain() {
                    pending.add_text(&id, now);
                }
            }
            _ = signals.term.recv() => break shutdown_exit("SIGTERM"),
            _ = signals.int.recv() => break shutdown_exit("SIGINT"),
            _ = signals.hup.recv() => reload_config(config, reconciler, reload),
        }
        if reader.is_finished() {
            break LoopExit::ConnectionLost("the event stream ended".into());
        }
        if dirty.overflowed.swap(false, Ordering::Relaxed) {
            reconciler.resync_all();
        }
        last_pass = Some(Instant::now());
        let span = reconciler.telemetry_mut().next_pass();
        if let Err(e) = reconciler
            .reconcile(client, &mut pending, &|| !dirty.is_empty())
            .instrument(span)
            .await
        {
            // Losing Docker mid-reconcile: reconnect and resync.
            break LoopExit::ConnectionLost(e.to_string());
        }
    };
    reader.abort();
    exit
}

/// SIGHUP: re-reads the configuration and applies what a running daemon
/// can (labels, rules, on_warp_down, caps) on the next pass, which follows
/// at once. Caps change in place, so connections are not dropped. A bad
/// file changes nothing.
fn reload_config(running: &Config, reconciler: &mut Reconciler, reload: &Reload) {
    let new = match reload() {
        Ok(new) => new,
        Err(e) => {
            let error = format!("{e:#}");
            error!(error = %error, "SIGHUP: the new configuration is invalid; keeping the running one");
            reconciler.telemetry_mut().reloaded(ReloadView {
                at: SystemTime::now(),
                applied: Vec::new(),
                needs_restart: Vec::new(),
                error: Some(error),
            });
            return;
        }
    };
    let reloaded = running.reload(&new);
    let names = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect();
    reconciler.telemetry_mut().reloaded(ReloadView {
        at: SystemTime::now(),
        applied: names(&reloaded.applied),
        needs_restart: names(&reloaded.needs_restart),
        error: None,
    });
    for key in &reloaded.needs_restart {
        warn!(
            key,
            "SIGHUP: this key changed, but only applies at start; restart netwarp to apply it"
        );
    }
    reconciler.update_settings(reloaded.settings);
    info!(applied = ?reloaded.applied, "SIGHUP: configuration reloaded");
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// How long an event waits before its pass. Debounced on the leading
/// edge: an event after a quiet spell is served at once (a container's
/// start should not wait for events that are not coming); one that comes
/// within [`DEBOUNCE`] of the last pass's start waits out the rest, so a
/// burst still costs at most one pass per [`DEBOUNCE`] plus the passes'
/// own time.
fn debounce_wait(since_last_pass: Option<Duration>) -> Duration {
    since_last_pass.map_or(Duration::ZERO, |since| DEBOUNCE.saturating_sub(since))
}

fn shutdown_exit(signal: &str) -> LoopExit {
    shutdown(signal);
    LoopExit::Shutdown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_after_a_quiet_spell_is_served_at_once_one_in_a_burst_waits() {
        assert_eq!(debounce_wait(None), Duration::ZERO);
        assert_eq!(debounce_wait(Some(DEBOUNCE * 3)), Duration::ZERO);
        assert_eq!(debounce_wait(Some(DEBOUNCE)), Duration::ZERO);
        let in_burst = Duration::from_millis(5);
        assert_eq!(debounce_wait(Some(in_burst)), DEBOUNCE - in_burst);
    }
}
