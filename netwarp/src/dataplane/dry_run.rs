//! The dry-run dataplane: a **simulation**. It takes each target's plan,
//! remembers what it would program and reports whether that changed, but
//! touches no kernel state and needs no privileges. It exists for scale
//! tests of the controller (a simulated Docker API with thousands of
//! containers), where neither network namespaces nor veths exist.
//!
//! With `dataplane.dry_run_record` set, the programmed set is written as
//! JSON after every pass that changed it, so a harness can compare it with
//! what its simulated world should yield. A thread of its own writes it:
//! thousands of targets are megabytes, which no pass should wait on.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{
    ebpf::{EbpfError, map_is_full},
    settled::Settled,
    sync::{FailureReason, TargetError},
};
use crate::plan::{GuardPlan, Plan, TargetPlan, TargetState};

/// The label every record carries, so nobody mistakes it for a real dataplane.
pub const SIMULATION_NOTE: &str =
    "dry-run dataplane: a simulation; nothing was programmed in any kernel";

/// What the dry-run dataplane holds for one target: the parts of its plan
/// that a real dataplane would program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRunTarget {
    pub name: String,
    pub pid: Option<u32>,
    pub warp: String,
    /// `steered`, `blocked`, `bypassed` or `refused`.
    pub state: String,
    pub via_v4: Option<String>,
    pub via_v6: Option<String>,
    pub mac_on_network: Option<String>,
    pub warp_pid: Option<u32>,
    pub warp_mac: Option<String>,
    /// Each entry as `RULE via ADDRESS` or `RULE block`, sorted.
    pub entries: Vec<String>,
}

impl DryRunTarget {
    pub fn from_plan(target: &TargetPlan) -> Self {
        let (via_v4, via_v6) = match &target.state {
            TargetState::Steered { via_v4, via_v6, .. } => {
                (via_v4.map(|a| a.to_string()), via_v6.map(|a| a.to_string()))
            }
            _ => (None, None),
        };
        Self {
            name: target.name.clone(),
            pid: target.pid,
            warp: target.warp.clone(),
            state: target.state.name().to_owned(),
            via_v4,
            via_v6,
            mac_on_network: target.mac_on_network.clone(),
            warp_pid: target.warp_pid,
            warp_mac: target.warp_mac.clone(),
            entries: target
                .entries
                .iter()
                .map(|e| format!("{} {}", e.rule, e.action))
                .collect(),
        }
    }
}

/// The file written to `dataplane.dry_run_record`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DryRunRecord {
    pub simulation: String,
    /// Reconcile passes so far.
    pub passes: u64,
    /// By container id.
    pub targets: BTreeMap<String, DryRunTarget>,
    /// By container id: how often the target was checked where a real
    /// dataplane would go to the kernel. An ordinary pass skips a target
    /// whose plan did not change; the first pass, a resync and an event
    /// naming it do not.
    #[serde(default)]
    pub visits: BTreeMap<String, u64>,
}

/// What a correct dry-run dataplane holds after reconciling `plan`.
pub fn expected_targets(plan: &Plan) -> BTreeMap<String, DryRunTarget> {
    plan.targets
        .iter()
        .map(|t| (t.id.clone(), DryRunTarget::from_plan(t)))
        .collect()
}

/// Reads a record written by a dry-run daemon.
pub fn read_record(path: &Path) -> io::Result<DryRunRecord> {
    let text = std::fs::read(path)?;
    serde_json::from_slice(&text).map_err(io::Error::other)
}

/// Faults a test injects into the dry-run dataplane, and what it saw:
/// a handle shared with the dataplane the reconciler owns.
#[derive(Clone, Debug, Default)]
pub struct DryRunFaults(Arc<Mutex<Faults>>);

#[derive(Debug, Default)]
struct Faults {
    /// Target names whose writes fail, as a full eBPF map would.
    failing: HashSet<String>,
    /// Guard writes fail.
    failing_guards: bool,
    /// The ids of the targets written (not skipped), in order; only for
    /// a handle a test holds (see [`DryRunDataplane::with_faults`]): a
    /// daemon's would grow by every write for as long as it runs.
    written: Option<Vec<String>>,
}

impl DryRunFaults {
    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes of the target named `name` fail (`true`) or succeed again.
    pub fn fail_target(&self, name: &str, failing: bool) {
        let mut faults = self.lock();
        if failing {
            faults.failing.insert(name.to_owned());
        } else {
            faults.failing.remove(name);
        }
    }

    /// Guard writes fail (`true`) or succeed again.
    pub fn fail_guards(&self, failing: bool) {
        self.lock().failing_guards = failing;
    }

    /// The ids of the targets written so far, in order (a write is what a
    /// real dataplane pays for; a skipped, settled target is not one).
    pub fn written(&self) -> Vec<String> {
        self.lock().written.clone().unwrap_or_default()
    }

    /// The error a full map gives, as the eBPF dataplane reports it.
    fn map_full() -> TargetError {
        let io_error = io::Error::from_raw_os_error(libc::E2BIG);
        let source = aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error,
        });
        debug_assert!(map_is_full(&source));
        TargetError::Ebpf(EbpfError::Map {
            map: "dry-run",
            source,
        })
    }
}

#[derive(Debug, Default)]
pub struct DryRunDataplane {
    faults: DryRunFaults,
    /// The guards "written", by network.
    guards: HashMap<String, GuardPlan>,
    /// What is "programmed", by container id: each target as its JSON in
    /// the record, so writing the record serializes none of them again,
    /// and shared with the record writer rather than copied.
    programmed: BTreeMap<Arc<str>, Arc<str>>,
    /// The plans last "programmed", as a real dataplane remembers them.
    settled: Settled<Arc<TargetPlan>>,
    visits: BTreeMap<Arc<str>, u64>,
    /// Writes the record, when there is one.
    writer: Option<RecordWriter>,
    passes: u64,
    changed_this_pass: usize,
    /// Something changed since the record was last written.
    unwritten: bool,
}

impl DryRunDataplane {
    pub fn new(record_path: Option<PathBuf>) -> Self {
        Self {
            writer: record_path.map(RecordWriter::spawn),
            // The first pass always writes, even an empty set.
            unwritten: true,
            ..Self::default()
        }
    }

    /// With faults a test injects through `faults`, which also records
    /// the targets written.
    pub fn with_faults(self, faults: DryRunFaults) -> Self {
        faults.lock().written.get_or_insert_default();
        Self { faults, ..self }
    }

    /// Whether [`DryRunDataplane::program`] would skip `target`.
    pub fn settled(&self, target: &Arc<TargetPlan>, verify: bool) -> bool {
        self.settled.unchanged(&target.id, target, verify)
    }

    /// "Programs" one target. Returns whether anything changed. Unless
    /// `verify`, an unchanged plan is skipped, as a real dataplane skips
    /// the kernel for it. A target the faults name fails and keeps what
    /// it had, as a real dataplane keeps the previous policy.
    pub fn program(&mut self, target: &Arc<TargetPlan>, verify: bool) -> Result<bool, TargetError> {
        if self.settled.unchanged(&target.id, target, verify) {
            return Ok(false);
        }
        match self.visits.get_mut(target.id.as_str()) {
            Some(visits) => *visits += 1,
            None => {
                self.visits.insert(target.id.as_str().into(), 1);
            }
        }
        self.unwritten = true;
        let desired: Arc<str> = serde_json::to_string(&DryRunTarget::from_plan(target))
            .expect("a DryRunTarget serializes")
            .into();
        let changed = self.programmed.get(target.id.as_str()) != Some(&desired);
        let mut faults = self.faults.lock();
        if faults.failing.contains(&target.name) {
            drop(faults);
            let failed = Err(DryRunFaults::map_full());
            self.settled.record(&target.id, target, &failed);
            return failed;
        }
        if changed && let Some(written) = &mut faults.written {
            written.push(target.id.clone());
        }
        drop(faults);
        self.settled
            .record(&target.id, target, &Ok::<_, ()>(changed));
        if !changed {
            return Ok(false);
        }
        // The visits' copy of the id, shared: not a second one.
        let id = match self.visits.get_key_value(target.id.as_str()) {
            Some((id, _)) => Arc::clone(id),
            None => target.id.as_str().into(),
        };
        self.programmed.insert(id, desired);
        self.changed_this_pass += 1;
        self.unwritten = true;
        Ok(true)
    }

    /// "Writes" the guards: all of them, unless the faults fail them.
    pub fn sync_guards(&mut self, guards: &[(String, &GuardPlan)]) -> Vec<FailureReason> {
        if self.faults.lock().failing_guards {
            self.guards.clear();
            return vec![FailureReason::MapFull; guards.len()];
        }
        self.guards = (guards.iter())
            .map(|(_, g)| (g.network.clone(), (*g).clone()))
            .collect();
        Vec::new()
    }

    /// The guards "in place".
    pub fn guards_in_place(&self) -> impl Iterator<Item = &GuardPlan> {
        self.guards.values()
    }

    /// Ends a pass: forgets targets not `seen` in it (they left) and writes
    /// the record if anything changed.
    pub fn finish_pass(&mut self, seen: &crate::model::IdSet) {
        let before = self.programmed.len();
        self.programmed.retain(|id, _| seen.contains(&**id));
        self.visits.retain(|id, _| seen.contains(&**id));
        self.settled.retain(|id| seen.contains(id));
        let released = before - self.programmed.len();
        if released > 0 {
            self.unwritten = true;
        }
        self.passes += 1;
        debug!(
            target: "netwarp::dry_run",
            pass = self.passes,
            targets = self.programmed.len(),
            changed = self.changed_this_pass,
            released,
            "dry-run pass (simulation; nothing programmed)"
        );
        self.changed_this_pass = 0;
        if let Some(writer) = &self.writer
            && (self.unwritten || writer.failed())
        {
            writer.hand(RecordData {
                passes: self.passes,
                targets: (self.programmed.iter())
                    .map(|(id, json)| (Arc::clone(id), Arc::clone(json)))
                    .collect(),
                visits: (self.visits.iter())
                    .map(|(id, n)| (Arc::clone(id), *n))
                    .collect(),
            });
            self.unwritten = false;
        }
    }

    /// Waits until the record holds everything handed to the writer.
    pub fn flush_record(&self) {
        if let Some(writer) = &self.writer {
            writer.flush();
        }
    }
}

/// What one record holds, shared with the dataplane.
#[derive(Debug)]
struct RecordData {
    passes: u64,
    /// By container id, in order: each target's JSON.
    targets: Vec<(Arc<str>, Arc<str>)>,
    visits: Vec<(Arc<str>, u64)>,
}

impl RecordData {
    /// A [`DryRunRecord`]'s JSON, its targets as they were serialized,
    /// streamed to the file (never the whole record in memory). Written
    /// then renamed, so a reader never sees half a record.
    fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut out = io::BufWriter::with_capacity(64 * 1024, std::fs::File::create(&tmp)?);
        out.write_all(b"{\"simulation\":")?;
        serde_json::to_writer(&mut out, SIMULATION_NOTE)?;
        write!(out, ",\"passes\":{},\"targets\":{{", self.passes)?;
        for (i, (id, target)) in self.targets.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut out, &**id)?;
            out.write_all(b":")?;
            out.write_all(target.as_bytes())?;
        }
        out.write_all(b"},\"visits\":{")?;
        for (i, (id, visits)) in self.visits.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut out, &**id)?;
            write!(out, ":{visits}")?;
        }
        out.write_all(b"}}")?;
        out.into_inner().map_err(io::IntoInnerError::into_error)?;
        std::fs::rename(&tmp, path)
    }
}

/// The thread that writes the record: a pass hands over the newest
/// [`RecordData`] and goes on; a newer one handed over before the thread
/// got to the last replaces it (only the newest matters).
#[derive(Debug)]
struct RecordWriter {
    shared: Arc<WriterShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct WriterShared {
    state: Mutex<WriterState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct WriterState {
    next: Option<RecordData>,
    writing: bool,
    /// The last write failed: the next pass hands the record over again.
    failed: bool,
    closing: bool,
}

impl WriterShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RecordWriter {
    fn spawn(path: PathBuf) -> Self {
        let shared = Arc::new(WriterShared::default());
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("netwarp-dry-run".into())
            .spawn(move || {
                loop {
                    let data = {
                        let mut state = writer.lock();
                        while state.next.is_none() && !state.closing {
                            state = (writer.changed.wait(state)).unwrap_or_else(|e| e.into_inner());
                        }
                        let Some(data) = state.next.take() else {
                            return;
                        };
                        state.writing = true;
                        data
                    };
                    let written = data.write(&path);
                    if let Err(e) = &written {
                        warn!(path = %path.display(), error = %e, "dry-run: writing the record failed");
                    }
                    let mut state = writer.lock();
                    state.writing = false;
                    state.failed = written.is_err();
                    writer.changed.notify_all();
                }
            });
        match thread {
            Ok(thread) => Self {
                shared,
                thread: Some(thread),
            },
            // Without a thread, nothing is written: said once, here.
            Err(e) => {
                warn!(error = %e, "dry-run: cannot start the record writer; no record is written");
                Self {
                    shared,
                    thread: None,
                }
            }
        }
    }

    fn hand(&self, data: RecordData) {
        self.shared.lock().next = Some(data);
        self.shared.changed.notify_all();
    }

    fn failed(&self) -> bool {
        self.shared.lock().failed
    }

    /// Waits until what was handed over is written (or failed).
    fn flush(&self) {
        if self.thread.is_none() {
            return;
        }
        let mut state = self.shared.lock();
        while state.next.is_some() || state.writing {
            state = (self.shared.changed.wait(state)).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for RecordWriter {
    /// Writes what was handed over last, then ends the thread.
    fn drop(&mut self) {
        self.flush();
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::parse_rules,
        plan::{Action, BlockReason, Entry},
    };

    fn target(id: &str, state: TargetState, pid: u32) -> Arc<TargetPlan> {
        let action = match &state {
            TargetState::Steered { via_v4, .. } => Action::Via(via_v4.unwrap().into()),
            _ => Action::Block,
        };
        Arc::new(TargetPlan {
            warp_group: Vec::new(),
            group_mode: crate::plan::GroupMode::Failover,
            spread: Vec::new(),
            id: id.into(),
            name: format!("name-{id}"),
            pid: Some(pid),
            warp: "warp-a".into(),
            state,
            entries: Entry::all(&parse_rules("203.0.113.0/24,tcp:443").unwrap(), action),
            mac_on_network: Some("02:42:ac:11:00:02".into()),
            warp_pid: None,
            warp_mac: None,
            warp_macs: Vec::new(),
            addresses: Vec::new(),
            excluded: Vec::new(),
            shares_namespace_of: None,
        })
    }

    fn steered() -> TargetState {
        TargetState::Steered {
            network: "n".into(),
            via_v4: Some("172.17.0.9".parse().unwrap()),
            via_v6: None,
        }
    }

    #[test]
    fn records_changes_and_forgets_departed_targets() {
        let dir = std::env::temp_dir().join(format!("nw-dry-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("record.json");
        let dry = DryRunDataplane::new(Some(path.clone()));
        let a = target("a", steered(), 10);
        let b = target(
            "b",
            TargetState::Blocked(BlockReason::WarpMissing { warp: "w".into() }),
            11,
        );
        let faults = DryRunFaults::default();
        let mut dry = dry.with_faults(faults.clone());
        assert!(dry.program(&a, true).unwrap());
        assert!(dry.program(&b, true).unwrap());
        assert!(
            !dry.program(&a, true).unwrap(),
            "an unchanged plan is not reprogrammed"
        );
        assert!(!dry.program(&b, false).unwrap(), "b's write is confirmed");
        assert!(
            !dry.program(&b, false).unwrap(),
            "then an unchanged plan is skipped"
        );
        assert_eq!(faults.written(), ["a", "b"]);
        dry.finish_pass(&["a".to_string(), "b".to_string()].into_iter().collect());
        dry.flush_record();
        let record = read_record(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            serde_json::to_vec(&record).unwrap(),
            "the record is a DryRunRecord's JSON"
        );
        assert_eq!(record.visits["a"], 2, "a verifying pass checks");
        assert_eq!(
            record.visits["b"], 2,
            "an ordinary pass skips a settled plan"
        );
        assert_eq!(record.simulation, SIMULATION_NOTE);
        assert_eq!(record.passes, 1);
        assert_eq!(record.targets["a"].state, "steered");
        assert_eq!(record.targets["a"].via_v4.as_deref(), Some("172.17.0.9"));
        assert_eq!(
            record.targets["a"].entries,
            ["203.0.113.0/24 tcp:443 via 172.17.0.9"]
        );
        assert_eq!(record.targets["b"].state, "blocked");
        assert_eq!(
            record.targets["b"].entries,
            ["203.0.113.0/24 tcp:443 block"]
        );

        // A restart (new pid) is a change; b left.
        assert!(dry.program(&target("a", steered(), 12), false).unwrap());
        faults.fail_target("name-a", true);
        let failed = dry.program(&target("a", steered(), 13), false).unwrap_err();
        assert_eq!(failed.reason(), FailureReason::MapFull, "{failed}");
        dry.finish_pass(&["a".to_string()].into_iter().collect());
        dry.flush_record();
        let record = read_record(&path).unwrap();
        assert_eq!(record.passes, 2);
        assert_eq!(record.targets.len(), 1);
        assert_eq!(record.targets["a"].pid, Some(12));
        assert_eq!(
            record.targets,
            expected_targets(&Plan {
                targets: vec![target("a", steered(), 12)],
                ..Plan::default()
            })
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
