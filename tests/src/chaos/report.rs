//! What a chaos scenario reports, and where it is saved for `cargo xtask
//! chaos` to render into RELIABILITY.md.

use std::path::Path;

use serde::Serialize;

/// The outcome of one kind of fault.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FaultResult {
    pub fault: String,
    pub injected: u32,
    /// Converged to the planned state with nothing orphaned.
    pub survived: u32,
    /// Never converged (state lost or wrong), with the first reasons.
    pub lost_state: u32,
    pub leaked_packets: u64,
    pub failures: Vec<String>,
    /// Deviations that are reported but neither lose state nor leak.
    pub notes: Vec<String>,
    /// Whether the fault opens a window before netwarp notices (a
    /// (re)started target runs before netwarp programs its new namespace;
    /// a deleted link pin is only seen at the next resync), which only the
    /// bridge guard holds closed.
    pub leak_window: bool,
    pub total_secs: f64,
}

/// The outcome of a scenario in one dataplane.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScenarioReport {
    pub mode: String,
    pub faults: Vec<FaultResult>,
    pub leaked_packets: u64,
    /// Probes the target sent before netwarp first programmed it (it
    /// starts before the daemon): expected, and not counted as leaks.
    pub leaked_before_first_reconcile: u64,
    pub probes_delivered: u64,
    pub probes_failed: u64,
    pub delivered_fraction: f64,
    pub bystander_unchanged: bool,
    pub daemon_peak_rss_kib: u64,
    pub total_secs: f64,
}

impl ScenarioReport {
    pub fn faults_survived(&self) -> u32 {
        self.faults.iter().map(|f| f.survived).sum()
    }
    pub fn faults_injected(&self) -> u32 {
        self.faults.iter().map(|f| f.injected).sum()
    }
    pub fn lost_state(&self) -> u32 {
        self.faults.iter().map(|f| f.lost_state).sum()
    }
}

/// Writes `reports` as JSON to `$NETWARP_CHAOS_REPORT_DIR/<name>.json`, if set.
pub fn save_report<T: Serialize>(name: &str, report: &T) {
    let Some(dir) = std::env::var_os("NETWARP_CHAOS_REPORT_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("{name}.json"));
    match serde_json::to_string_pretty(report) {
        Ok(json) => {
            if let Err(e) = std::fs::write(&path, json) {
                eprintln!("could not write {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("could not serialise the {name} report: {e}"),
    }
}

/// Writes `text` to `$NETWARP_CHAOS_REPORT_DIR/<name>`, if set.
pub fn save_text(name: &str, text: &str) {
    if let Some(dir) = std::env::var_os("NETWARP_CHAOS_REPORT_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(Path::new(&dir).join(name), text);
    }
}
