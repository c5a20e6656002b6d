//! The prober: a task that probes every warp with a probe label at an
//! interval, keeps each warp's history, and wakes the reconcile loop when a
//! verdict changes, so the pass that follows plans with it. Passes tell it
//! which warps to probe ([`Prober::set_warps`]) and read the verdicts
//! ([`Prober::verdicts`]); it never plans or programs anything itself.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::future::join_all;
use tokio::sync::Notify;

use super::{ProbeHistory, ProbeSettings, ProbeSpec, ProbeVerdict, probe_once};

/// A warp to probe: its container id, the pid whose namespace the probe
/// runs in, and what to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbedWarp {
    pub id: String,
    pub pid: u32,
    pub spec: ProbeSpec,
}

/// What the probes of one warp say now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    pub spec: ProbeSpec,
    pub verdict: ProbeVerdict,
    pub last_rtt: Option<Duration>,
    /// Probes run and failed since netwarp started probing this warp.
    pub runs: u64,
    pub failures: u64,
}

/// The warps whose verdict changed since the event loop last looked, and
/// the signal that wakes it.
#[derive(Default)]
pub struct Wakeups {
    ids: Mutex<Vec<String>>,
    notify: Notify,
}

impl Wakeups {
    pub fn push(&self, id: &str) {
        self.ids.lock().expect("wake-ups").push(id.to_owned());
        self.notify.notify_one();
    }

    /// Resolves once a warp was pushed (at once if one was meanwhile).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    pub fn drain(&self) -> Vec<String> {
        std::mem::take(&mut *self.ids.lock().expect("wake-ups"))
    }
}

type ProbeFuture = Pin<Box<dyn Future<Output = Result<Duration, String>> + Send>>;
type ProbeFn = dyn Fn(u32, ProbeSpec, Duration) -> ProbeFuture + Send + Sync;

struct Probed {
    warp: ProbedWarp,
    history: ProbeHistory,
    runs: u64,
    failures: u64,
}

#[derive(Default)]
struct Shared {
    warps: HashMap<String, Probed>,
}

/// The handle passes use; the task stops when it is dropped.
pub struct Prober {
    shared: Arc<Mutex<Shared>>,
    settings: ProbeSettings,
    /// Wakes the task for a round at once (a new warp to probe).
    now: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prober {
    /// Starts probing with real probes from the warps' namespaces; `wake`
    /// is called with a warp's id when its verdict changes.
    pub fn spawn(settings: ProbeSettings, wake: impl Fn(&str) + Send + Sync + 'static) -> Self {
        let probe: Arc<ProbeFn> = Arc::new(|pid, spec, timeout| {
            Box::pin(async move {
                probe_once(pid, spec, timeout)
                    .await
                    .map_err(|e| e.to_string())
            })
        });
        Self::spawn_with(settings, probe, wake)
    }

    fn spawn_with(
        settings: ProbeSettings,
        probe: Arc<ProbeFn>,
        wake: impl Fn(&str) + Send + Sync + 'static,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let now = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            Arc::clone(&shared),
            settings,
            probe,
            Arc::clone(&now),
            wake,
        ));
        Self {
            shared,
            settings,
            now,
            task,
        }
    }

    /// The warps to probe from now on. A warp whose pid or spec changed
    /// (recreated, relabelled) starts a fresh history; a new one is probed
    /// at once; one no longer listed is forgotten.
    pub fn set_warps(&self, warps: Vec<ProbedWarp>) {
        let mut shared = self.shared.lock().expect("prober state");
        let mut fresh = false;
        let mut next = HashMap::with_capacity(warps.len());
        for warp in warps {
            let kept = (shared.warps.remove(&warp.id)).filter(|p| p.warp == warp);
            fresh |= kept.is_none();
            let probed = kept.unwrap_or_else(|| Probed {
                warp: warp.clone(),
                history: ProbeHistory::default(),
                runs: 0,
                failures: 0,
            });
            next.insert(warp.id, probed);
        }
        shared.warps = next;
        drop(shared);
        if fresh {
            self.now.notify_one();
        }
    }

    /// Every probed warp's report, by container id.
    pub fn verdicts(&self) -> HashMap<String, ProbeReport> {
        let shared = self.shared.lock().expect("prober state");
        (shared.warps.iter())
            .map(|(id, probed)| {
                let report = ProbeReport {
                    spec: probed.warp.spec.clone(),
                    verdict: probed.history.verdict(&self.settings),
                    last_rtt: probed.history.last_rtt(),
                    runs: probed.runs,
                    failures: probed.failures,
                };
                (id.clone(), report)
            })
            .collect()
    }
}

/// Rounds at the interval (or at once when told): every warp probed
/// concurrently, each bounded by the timeout.
async fn run(
    shared: Arc<Mutex<Shared>>,
    settings: ProbeSettings,
    probe: Arc<ProbeFn>,
    now: Arc<Notify>,
    wake: impl Fn(&str) + Send + Sync + 'static,
) {
    let mut interval = tokio::time::interval(settings.interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = now.notified() => {}
        }
        let warps: Vec<ProbedWarp> = {
            let shared = shared.lock().expect("prober state");
            shared.warps.values().map(|p| p.warp.clone()).collect()
        };
        let results = join_all(warps.into_iter().map(|warp| {
            let probe = Arc::clone(&probe);
            async move {
                // The probe's own timeout bounds it; this one bounds a
                // namespace entry that hangs.
                let bound = settings.timeout * 2;
                let result = match tokio::time::timeout(
                    bound,
                    probe(warp.pid, warp.spec.clone(), settings.timeout),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(format!("{}: no answer within {bound:?}", warp.spec)),
                };
                (warp, result)
            }
        }))
        .await;
        let mut changed = Vec::new();
        {
            let mut shared = shared.lock().expect("prober state");
            for (warp, result) in results {
                // Replaced or forgotten meanwhile: this result is stale.
                let Some(probed) = shared.warps.get_mut(&warp.id).filter(|p| p.warp == warp) else {
                    continue;
                };
                let before = probed.history.verdict(&settings);
                probed.runs += 1;
                probed.failures += u64::from(result.is_err());
                probed.history.record(result, &settings);
                if probed.history.verdict(&settings).is_up() != before.is_up() {
                    changed.push(warp.id.clone());
                }
            }
        }
        for id in changed {
            wake(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn warp(id: &str, pid: u32) -> ProbedWarp {
        ProbedWarp {
            id: id.into(),
            pid,
            spec: "tcp:198.51.100.7:443".parse().unwrap(),
        }
    }

    /// A prober whose probes answer while `up` is set, with its wake-ups.
    fn fake(up: Arc<AtomicBool>) -> (Prober, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let probe: Arc<ProbeFn> = Arc::new(move |_, _, _| {
            let up = up.load(Ordering::SeqCst);
            Box::pin(async move {
                if up {
                    Ok(Duration::from_millis(3))
                } else {
                    Err("refused".to_owned())
                }
            })
        });
        let settings = ProbeSettings {
            interval: Duration::from_millis(20),
            timeout: Duration::from_millis(50),
            failures: 2,
            window: 3,
        };
        let (woken, wake_rx) = tokio::sync::mpsc::unbounded_channel();
        let prober = Prober::spawn_with(settings, probe, move |id| {
            let _ = woken.send(id.to_owned());
        });
        (prober, wake_rx)
    }

    /// The next wake-up; a test that waits longer than any interval here
    /// could need has failed (never hangs).
    async fn next(woken: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(10), woken.recv())
            .await
            .expect("a wake-up")
    }

    #[tokio::test]
    async fn a_verdict_change_wakes_the_loop_and_reports_follow() {
        let up = Arc::new(AtomicBool::new(true));
        let (prober, mut woken) = fake(Arc::clone(&up));
        assert!(prober.verdicts().is_empty());
        prober.set_warps(vec![warp("w1", 10)]);
        // Unknown, then up after the first probe: a change, so a wake-up.
        assert_eq!(next(&mut woken).await.as_deref(), Some("w1"));
        let report = &prober.verdicts()["w1"];
        assert_eq!(report.verdict, ProbeVerdict::Up);
        assert_eq!(report.last_rtt, Some(Duration::from_millis(3)));

        up.store(false, Ordering::SeqCst);
        assert_eq!(next(&mut woken).await.as_deref(), Some("w1"));
        let report = &prober.verdicts()["w1"];
        assert!(
            matches!(&report.verdict, ProbeVerdict::Down { last_error, .. } if last_error == "refused"),
            "{report:?}"
        );
        assert!(report.failures >= 2);

        up.store(true, Ordering::SeqCst);
        assert_eq!(next(&mut woken).await.as_deref(), Some("w1"));
        assert_eq!(prober.verdicts()["w1"].verdict, ProbeVerdict::Up);
    }

    #[tokio::test]
    async fn a_recreated_warp_starts_afresh_and_a_gone_one_is_forgotten() {
        let up = Arc::new(AtomicBool::new(true));
        let (prober, mut woken) = fake(Arc::clone(&up));
        prober.set_warps(vec![warp("w1", 10)]);
        assert_eq!(next(&mut woken).await.as_deref(), Some("w1"));
        let runs = prober.verdicts()["w1"].runs;
        assert!(runs >= 1);
        // Same warp, new pid (recreated): a fresh, unknown history.
        prober.set_warps(vec![warp("w1", 11)]);
        let report = &prober.verdicts()["w1"];
        assert!(report.runs <= 1, "{report:?}");
        prober.set_warps(Vec::new());
        assert!(prober.verdicts().is_empty());
    }
}
