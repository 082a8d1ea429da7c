//! CPU time by process, read from `/proc`: what each part of the path spends on a request.
//!
//! A part is a process and, when asked, every process below it that no other part claims (the
//! control plane's processes under `gatehouse up`, nginx's workers under its master). Times are
//! user plus system time, in the kernel's clock ticks (`USER_HZ`, 100 per second on Linux for
//! every `/proc` reader whatever the kernel's own tick).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

/// `USER_HZ`: `/proc/*/stat` counts CPU time in hundredths of a second.
const TICKS_PER_SECOND: f64 = 100.0;

/// A named part of the request path.
#[derive(Clone, Debug)]
pub struct Part {
    pub name: String,
    pub pid: u32,
    /// Counts the process `pid` itself.
    pub own: bool,
    /// Counts the processes below `pid` (those no other part names).
    pub descendants: bool,
}

impl Part {
    pub fn process(name: &str, pid: u32) -> Self {
        Self {
            name: name.to_owned(),
            pid,
            own: true,
            descendants: false,
        }
    }
    /// The process and those below it.
    pub fn tree(name: &str, pid: u32) -> Self {
        Self {
            descendants: true,
            ..Self::process(name, pid)
        }
    }
    /// Only the processes below `pid` (the control plane `gatehouse up` started).
    pub fn below(name: &str, pid: u32) -> Self {
        Self {
            own: false,
            descendants: true,
            ..Self::process(name, pid)
        }
    }
}

/// One process's line of `/proc/PID/stat`: its parent and CPU ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stat {
    ppid: u32,
    ticks: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and may hold spaces
/// and parentheses itself, so fields are counted from its last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let rest = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) … utime(14) stime(15).
    let field = |n: usize| fields.get(n - 3);
    Some(Stat {
        ppid: field(4)?.parse().ok()?,
        ticks: field(14)?.parse::<u64>().ok()? + field(15)?.parse::<u64>().ok()?,
    })
}

fn processes() -> HashMap<u32, Stat> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some(stat) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .as_deref()
            .and_then(parse_stat)
        {
            out.insert(pid, stat);
        }
    }
    out
}

/// CPU seconds each part has used so far.
pub fn sample(parts: &[Part]) -> BTreeMap<String, f64> {
    attribute(parts, &processes())
}

fn attribute(parts: &[Part], table: &HashMap<u32, Stat>) -> BTreeMap<String, f64> {
    let named: Vec<u32> = parts.iter().map(|p| p.pid).collect();
    let mut out = BTreeMap::new();
    for part in parts {
        let mut ticks = if part.own {
            table.get(&part.pid).map_or(0, |s| s.ticks)
        } else {
            0
        };
        if part.descendants {
            for (&pid, stat) in table {
                if pid != part.pid && !named.contains(&pid) && below(stat, part.pid, table, &named)
                {
                    ticks += stat.ticks;
                }
            }
        }
        *out.entry(part.name.clone()).or_default() += ticks as f64 / TICKS_PER_SECOND;
    }
    out
}

/// Whether `pid` descends from `root` without passing through another named part.
fn below(stat: &Stat, root: u32, table: &HashMap<u32, Stat>, named: &[u32]) -> bool {
    let mut parent = stat.ppid;
    for _ in 0..64 {
        if parent == root {
            return true;
        }
        if parent <= 1 || named.contains(&parent) {
            return false;
        }
        match table.get(&parent) {
            Some(s) => parent = s.ppid,
            None => return false,
        }
    }
    false
}

/// CPU microseconds per request each part spent between two samples.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerRequest(pub BTreeMap<String, f64>);

impl PerRequest {
    pub fn between(
        before: &BTreeMap<String, f64>,
        after: &BTreeMap<String, f64>,
        requests: u64,
    ) -> Self {
        let n = requests.max(1) as f64;
        Self(
            after
                .iter()
                .map(|(name, t)| {
                    let used = t - before.get(name).copied().unwrap_or(0.0);
                    (name.clone(), used.max(0.0) * 1e6 / n)
                })
                .collect(),
        )
    }

    pub fn total(&self) -> f64 {
        self.0.values().sum()
    }

    /// The median of each part over several runs.
    pub fn median(runs: &[PerRequest]) -> Self {
        let mut names: Vec<&String> = runs.iter().flat_map(|r| r.0.keys()).collect();
        names.sort();
        names.dedup();
        Self(
            names
                .into_iter()
                .map(|name| {
                    let values: Vec<f64> =
                        runs.iter().filter_map(|r| r.0.get(name).copied()).collect();
                    (name.clone(), super::median(&values))
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_past_odd_names() {
        let line = "4242 (tokio (worker) 1) S 17 4242 17 0 -1 4194560 3018 0 0 0 250 75 0 0 20 0 9 0 1234 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 17,
                ticks: 325
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn descendants_count_for_the_nearest_named_part() {
        let stat = |ppid, ticks| Stat { ppid, ticks };
        // 10 up → 11 apiserver, 12 etcd; 20 nginx → 21, 22 workers; 30 the proxy, started by
        // the bench (1), not below up.
        let table = HashMap::from([
            (10, stat(1, 100)),
            (11, stat(10, 300)),
            (12, stat(10, 50)),
            (20, stat(1, 5)),
            (21, stat(20, 40)),
            (22, stat(20, 60)),
            (30, stat(1, 700)),
        ]);
        let parts = [
            Part::process("evidence", 10),
            Part::below("upstream", 10),
            Part::tree("nginx", 20),
            Part::process("proxy", 30),
        ];
        let seconds = attribute(&parts, &table);
        assert_eq!(seconds["evidence"], 1.0);
        assert_eq!(seconds["upstream"], 3.5);
        assert_eq!(seconds["nginx"], 1.05);
        assert_eq!(seconds["proxy"], 7.0);

        let before = BTreeMap::from([("proxy".to_owned(), 1.0)]);
        let after = BTreeMap::from([("proxy".to_owned(), 2.0), ("nats".to_owned(), 0.5)]);
        let per = PerRequest::between(&before, &after, 10_000);
        assert_eq!(per.0["proxy"], 100.0);
        assert_eq!(per.0["nats"], 50.0);
        assert_eq!(per.total(), 150.0);
    }
}
