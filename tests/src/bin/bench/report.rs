//! The bench's results: tables for the terminal and for BENCHMARKS.md,
//! goals with met/missed, the machine, and time helpers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One printed table.
#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub title: String,
    /// What exactly is measured, printed under the title.
    pub note: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, note: &str, header: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            note: note.to_owned(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        widths
    }

    pub fn text(&self) -> String {
        let widths = self.widths();
        let line = |cells: &[String]| {
            let mut out = String::from(" ");
            for (cell, w) in cells.iter().zip(&widths) {
                out.push_str(&format!(" {cell:<w$} "));
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = format!("== {} ==\n", self.title);
        if !self.note.is_empty() {
            out.push_str(&format!("   {}\n", self.note));
        }
        out.push_str(&line(&self.header));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&line(&rule));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("### {}\n\n", self.title);
        if !self.note.is_empty() {
            out.push_str(&format!("{}\n\n", self.note));
        }
        out.push_str(&format!("| {} |\n", self.header.join(" | ")));
        out.push_str(&format!(
            "|{}\n",
            self.header.iter().map(|_| "---|").collect::<String>()
        ));
        for row in &self.rows {
            out.push_str(&format!("| {} |\n", row.join(" | ").replace('\n', " ")));
        }
        out
    }
}

/// A goal from issue 7: a target for the table, never an assertion.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub section: String,
    pub name: String,
    pub measured: f64,
    pub unit: String,
    /// The goal as text, e.g. `>= 1.00`.
    pub goal: String,
    pub met: bool,
}

impl Goal {
    pub fn at_least(section: &str, name: &str, measured: f64, unit: &str, goal: f64) -> Self {
        Self::new(
            section,
            name,
            measured,
            unit,
            format!(">= {goal}"),
            measured >= goal,
        )
    }

    pub fn at_most(section: &str, name: &str, measured: f64, unit: &str, goal: f64) -> Self {
        Self::new(
            section,
            name,
            measured,
            unit,
            format!("<= {goal}"),
            measured <= goal,
        )
    }

    pub fn below(section: &str, name: &str, measured: f64, unit: &str, goal: f64) -> Self {
        Self::new(
            section,
            name,
            measured,
            unit,
            format!("< {goal}"),
            measured < goal,
        )
    }

    pub fn within(section: &str, name: &str, measured: f64, centre: f64, tolerance: f64) -> Self {
        Self::new(
            section,
            name,
            measured,
            "x cap",
            format!("{centre} ± {:.0}%", tolerance * 100.0),
            (measured - centre).abs() <= tolerance * centre,
        )
    }

    fn new(section: &str, name: &str, measured: f64, unit: &str, goal: String, met: bool) -> Self {
        Self {
            section: section.to_owned(),
            name: name.to_owned(),
            measured,
            unit: unit.to_owned(),
            goal,
            met: met && measured.is_finite(),
        }
    }
}

pub fn goals_table(goals: &[Goal]) -> Table {
    let mut table = Table::new(
        "Goals",
        "targets from issue 7; a missed goal is reported, never a failure",
        &["section", "figure", "measured", "goal", "met"],
    );
    for g in goals {
        table.row(vec![
            g.section.clone(),
            g.name.clone(),
            format!("{} {}", fmt_num(g.measured), g.unit),
            g.goal.clone(),
            if g.met { "met" } else { "MISSED" }.to_owned(),
        ]);
    }
    table
}

/// Numbers with about three significant digits.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// `a / b`, or NaN when `b` is zero.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// p50, p99 and max of samples, and their count.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Spread {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            count: sorted.len(),
            p50: percentile(&sorted, 0.50),
            p99: percentile(&sorted, 0.99),
            max: percentile(&sorted, 1.0),
        }
    }
}

/// The machine the bench ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_gib: f64,
    pub docker: String,
    /// Speculation mitigations that tax every kernel call and return
    /// (and so every BPF helper call).
    pub cpu_mitigations: String,
    pub load_average_at_start: String,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let docker =
            netwarp_tests::command::run("docker", &["version", "--format", "{{.Server.Version}}"])
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into());
        Self {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_owned())
                .unwrap_or_default(),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            docker,
            cpu_mitigations: ["spectre_v2", "spec_rstack_overflow", "retbleed"]
                .iter()
                .filter_map(|v| {
                    let path = format!("/sys/devices/system/cpu/vulnerabilities/{v}");
                    let text = std::fs::read_to_string(path).ok()?;
                    Some(format!("{v}: {}", text.trim()))
                })
                .collect::<Vec<_>>()
                .join("; "),
            load_average_at_start: load_average(),
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Parses an RFC 3339 UTC timestamp as tracing prints it
/// (`2026-11-22T06:08:41.123456Z`) into nanoseconds since the epoch.
pub fn parse_rfc3339_utc_ns(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, mi, se) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let mut nanos: i128 = 0;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        nanos = digits.parse::<i128>().ok()? * 10i128.pow(9 - digits.len() as u32);
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se;
    Some(i128::from(secs) * 1_000_000_000 + nanos)
}

/// Now as nanoseconds since the epoch.
pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos() as i128
}

/// An RFC 3339 UTC timestamp (seconds) of `ns` since the epoch.
pub fn rfc3339(ns: i128) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let ns = parse_rfc3339_utc_ns("2026-11-22T06:08:41.123456Z").expect("parses");
        assert_eq!(ns % 1_000_000_000, 123_456_000);
        assert_eq!(rfc3339(ns), "2026-11-22T06:08:41Z");
        assert_eq!(
            parse_rfc3339_utc_ns("1970-01-01T00:00:01Z"),
            Some(1_000_000_000)
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), 50.0);
        assert_eq!(percentile(&s, 0.99), 99.0);
        assert_eq!(percentile(&s, 1.0), 100.0);
    }
}
