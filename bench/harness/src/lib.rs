//! Shared helpers for the Conduit benchmark binaries (`bench-mock`, `bench-load`,
//! `bench-report`): a tiny command-line parser, `/proc` readers and percentiles.

use std::fmt;

/// Error type of the harness: a message for the operator.
#[derive(Debug, Clone)]
pub struct BenchError(pub String);

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        BenchError(e.to_string())
    }
}

/// Build a [`BenchError`] from anything printable.
pub fn err(msg: impl Into<String>) -> BenchError {
    BenchError(msg.into())
}

/// Result alias of the harness.
pub type Result<T> = std::result::Result<T, BenchError>;

/// Minimal `--name value` / `--flag` command-line parser.
///
/// Positional arguments are kept in order. An option is a flag (no value) when it is
/// listed in `flags` given to [`Args::parse`]; every other `--name` takes the next
/// argument (or the part after `=`) as its value.
#[derive(Debug, Default, Clone)]
pub struct Args {
    positional: Vec<String>,
    options: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Args {
    /// Parse `args` (without the program name).
    pub fn parse<I: IntoIterator<Item = String>>(args: I, flags: &[&str]) -> Result<Args> {
        let mut out = Args::default();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                if name.is_empty() {
                    out.positional.extend(it.by_ref());
                    break;
                }
                if let Some((n, v)) = name.split_once('=') {
                    out.options.push((n.to_string(), v.to_string()));
                } else if flags.contains(&name) {
                    out.flags.push(name.to_string());
                } else {
                    let v = it
                        .next()
                        .ok_or_else(|| err(format!("option --{name} needs a value")))?;
                    out.options.push((name.to_string(), v));
                }
            } else {
                out.positional.push(a);
            }
        }
        Ok(out)
    }

    /// Positional arguments, in order.
    pub fn positional(&self) -> &[String] {
        &self.positional
    }

    /// Whether `--name` was given as a flag.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    /// Last value of `--name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable `--name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.options
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Parse `--name` as `T`, or `default` when absent.
    pub fn parse_or<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse::<T>()
                .map_err(|_| err(format!("invalid value for --{name}: {v:?}"))),
        }
    }

    /// Names of all options and flags given, to reject unknown ones.
    pub fn check_known(&self, known: &[&str]) -> Result<()> {
        for n in self
            .options
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(self.flags.iter().map(String::as_str))
        {
            if !known.contains(&n) {
                return Err(err(format!("unknown option --{n}")));
            }
        }
        Ok(())
    }
}

/// Clock ticks per second used by `/proc/PID/stat` (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a configuration value.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

/// CPU time (user, system; all threads; in clock ticks) of process `pid`,
/// from fields 14 and 15 of `/proc/PID/stat`.
pub fn process_cpu_ticks(pid: u32) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| err(format!("read /proc/{pid}/stat: {e}")))?;
    parse_stat_cpu_ticks(&text).ok_or_else(|| err(format!("unparsable /proc/{pid}/stat")))
}

/// Parse (utime, stime) out of the text of a `/proc/PID/stat` file.
pub fn parse_stat_cpu_ticks(text: &str) -> Option<(u64, u64)> {
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// The processes whose process group is `pgid` (field 5 of `/proc/PID/stat`).
pub fn process_group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if parse_stat_pgid(&text) == Some(pgid) {
            out.push(pid);
        }
    }
    out
}

/// Parse the process group (field 5) out of the text of a `/proc/PID/stat` file.
pub fn parse_stat_pgid(text: &str) -> Option<u32> {
    let after = &text[text.rfind(')')? + 1..];
    // `after` starts at field 3 (state): ppid is field 4, pgrp field 5.
    after.split_whitespace().nth(2)?.parse().ok()
}

/// A `kB` field (e.g. `VmHWM`, `VmRSS`) of `/proc/PID/status`, in KiB.
pub fn process_status_kib(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| err(format!("read /proc/{pid}/status: {e}")))?;
    parse_status_kib(&text, field).ok_or_else(|| err(format!("no {field} in /proc/{pid}/status")))
}

/// Parse a `Name:   1234 kB` line out of the text of a `/proc/PID/status` file.
pub fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Answers of the mock upstream that other tools reuse (`bench-alloc`).
pub mod payloads {
    /// A deterministic vector shaped like text-embedding-3-small's: values of a few
    /// hundredths, printed as OpenAI prints them (shortest float32 form).
    pub fn embedding_vector(dims: usize) -> (String, String) {
        use base64::Engine;
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut json = String::with_capacity(dims * 12 + 2);
        let mut raw = Vec::with_capacity(dims * 4);
        json.push('[');
        for i in 0..dims {
            // xorshift64*: uniform in [-1, 1), scaled to the usual spread.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let u = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
            let x = ((u * 2.0 - 1.0) * 0.06) as f32;
            if i > 0 {
                json.push(',');
            }
            json.push_str(&format!("{x:?}"));
            raw.extend_from_slice(&x.to_le_bytes());
        }
        json.push(']');
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        (json, format!("\"{b64}\""))
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted samples; 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing() {
        let s = "1234 (my (odd) prog) S 1 2 3 4 5 6 7 8 9 10 250 40 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_cpu_ticks(s), Some((250, 40)));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
        assert_eq!(parse_stat_pgid(s), Some(2));
    }

    #[test]
    fn status_parsing() {
        let s = "Name:\tconduit\nVmHWM:\t   12345 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(12345));
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(1000));
        assert_eq!(parse_status_kib(s, "VmPeak"), None);
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn args() {
        let a = Args::parse(
            ["x", "--n", "3", "--h=a: b", "--h", "c: d", "--v"]
                .iter()
                .map(|s| s.to_string()),
            &["v"],
        )
        .expect("parse");
        assert_eq!(a.positional(), ["x".to_string()]);
        assert_eq!(a.parse_or("n", 0u32).expect("n"), 3);
        assert_eq!(a.get_all("h"), vec!["a: b", "c: d"]);
        assert!(a.flag("v"));
        assert!(a.check_known(&["n", "h"]).is_err());
        assert!(a.check_known(&["n", "h", "v"]).is_ok());
    }
}
