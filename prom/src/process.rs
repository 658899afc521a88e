//! The `process_*` series every long-running gofe command exposes on its `/metrics` (the names
//! and meanings Prometheus's own client libraries use, so existing dashboards and alerts work),
//! and `gofe_build_info`.
//!
//! Values are read from `/proc/self` at each scrape, never on a request path. Where `/proc`
//! is not there (not Linux) the process series are left out rather than reported as zero.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, IntGaugeVec, Opts};

/// Clock ticks per second in `/proc/self/stat` (`USER_HZ`: 100 on every Linux architecture
/// gofe builds for; the kernel converts to it for user space whatever its internal rate).
const TICKS_PER_SECOND: f64 = 100.0;

/// A collector of the process's CPU time, memory, file descriptors, threads and start time,
/// and of `gofe_build_info{component,version}`. Register one per registry.
pub struct ProcessCollector {
    cpu: Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
    build_info: IntGaugeVec,
    descs: Vec<Desc>,
    /// The CPU seconds already added to the counter (it can only be incremented).
    cpu_seen: Mutex<f64>,
}

/// One reading of `/proc/self`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident memory, bytes.
    pub resident_bytes: i64,
    /// Virtual memory, bytes.
    pub virtual_bytes: i64,
    /// Open file descriptors.
    pub open_fds: i64,
    /// The soft limit on open file descriptors.
    pub max_fds: i64,
    /// Threads.
    pub threads: i64,
    /// When the process started, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where it is not there or cannot be read.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
        let mut s = parse(&stat, &status, &limits, &boot)?;
        // The directory read holds one descriptor of its own.
        s.open_fds = (open_fds - 1).max(0);
        Some(s)
    }
}

/// The figures of `/proc/self/stat`, `/proc/self/status`, `/proc/self/limits` and `/proc/stat`
/// (for the boot time); `None` when `stat` is not in the kernel's format.
fn parse(stat: &str, status: &str, limits: &str, boot: &str) -> Option<ProcessStats> {
    // The command name, in parentheses, may hold spaces and parentheses itself: the fields
    // are what follows the last `)`. Numbered from the process state (field 3 of proc(5)).
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let (utime, stime, start_ticks) = (field(14)?, field(15)?, field(22)?);
    let kib = |key: &str| -> Option<i64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<i64>()
            .ok()
    };
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let max_fds = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let boot_time: f64 = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        resident_bytes: kib("VmRSS:").unwrap_or(0) * 1024,
        virtual_bytes: kib("VmSize:").unwrap_or(0) * 1024,
        open_fds: 0,
        max_fds,
        threads,
        start_time_seconds: boot_time + start_ticks / TICKS_PER_SECOND,
    })
}

impl ProcessCollector {
    /// A collector for the running process; `component` names the gofe command (`proxy`,
    /// `controller`, `metrics-adapter`) in `gofe_build_info`.
    pub fn new(component: &str) -> ProcessCollector {
        let cpu = Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let resident = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_memory = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let threads = gauge("process_threads", "Number of OS threads in the process.");
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "gofe_build_info",
                "Always 1: the gofe component and version serving these metrics.",
            ),
            &["component", "version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[component, env!("CARGO_PKG_VERSION")])
            .set(1);
        let mut descs = Vec::new();
        for c in [
            &cpu as &dyn Collector,
            &resident,
            &virtual_memory,
            &open_fds,
            &max_fds,
            &threads,
            &start_time,
            &build_info,
        ] {
            descs.extend(c.desc().into_iter().cloned());
        }
        ProcessCollector {
            cpu,
            resident,
            virtual_memory,
            open_fds,
            max_fds,
            threads,
            start_time,
            build_info,
            descs,
            cpu_seen: Mutex::new(0.0),
        }
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = self.build_info.collect();
        let Some(s) = ProcessStats::read() else {
            return out;
        };
        {
            let mut seen = self.cpu_seen.lock().unwrap_or_else(|e| e.into_inner());
            if s.cpu_seconds > *seen {
                self.cpu.inc_by(s.cpu_seconds - *seen);
                *seen = s.cpu_seconds;
            }
        }
        self.resident.set(s.resident_bytes);
        self.virtual_memory.set(s.virtual_bytes);
        self.open_fds.set(s.open_fds);
        self.max_fds.set(s.max_fds);
        self.threads.set(s.threads);
        self.start_time.set(s.start_time_seconds);
        for c in [
            &self.cpu as &dyn Collector,
            &self.resident,
            &self.virtual_memory,
            &self.open_fds,
            &self.max_fds,
            &self.threads,
            &self.start_time,
        ] {
            out.extend(c.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (gofe (x) y) S 1 4242 4242 0 -1 4194560 1200 0 3 0 250 50 0 0 20 0 9 0 123456 1048576000 2500 18446744073709551615 1 1 0 0 0 0 0 4096 17 1 0 0 0 0 0";
    const STATUS: &str = "Name:\tgofe\nVmSize:\t  1024000 kB\nVmRSS:\t    10000 kB\nThreads:\t9\n";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            20000                20000                files\n";
    const BOOT: &str = "cpu  1 2 3\nbtime 1764547200\n";

    #[test]
    fn proc_files_are_read_as_the_kernel_writes_them() {
        let s = parse(STAT, STATUS, LIMITS, BOOT).unwrap();
        assert_eq!(
            s,
            ProcessStats {
                cpu_seconds: 3.0,
                resident_bytes: 10_000 * 1024,
                virtual_bytes: 1_024_000 * 1024,
                open_fds: 0,
                max_fds: 20_000,
                threads: 9,
                start_time_seconds: 1_764_547_200.0 + 1234.56,
            }
        );
        assert_eq!(parse("no parenthesis here", STATUS, LIMITS, BOOT), None);
        assert_eq!(
            parse("1 (x) S 1", STATUS, LIMITS, BOOT),
            None,
            "too few fields"
        );
    }

    #[test]
    fn this_process_is_measured() {
        let s = ProcessStats::read().expect("/proc/self on Linux");
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes);
        assert!(
            s.open_fds >= 3,
            "stdin, stdout, stderr at least: {}",
            s.open_fds
        );
        assert!(s.max_fds >= s.open_fds && s.threads >= 1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0,
            "started {} (now {now})",
            s.start_time_seconds
        );
    }

    #[test]
    fn a_registry_shows_the_series_and_the_counter_only_grows() {
        let r = prometheus::Registry::new();
        r.register(Box::new(ProcessCollector::new("proxy")))
            .unwrap();
        let names = |r: &prometheus::Registry| -> Vec<String> {
            r.gather().iter().map(|f| f.name().to_owned()).collect()
        };
        let first = names(&r);
        for n in [
            "gofe_build_info",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "process_threads",
            "process_virtual_memory_bytes",
        ] {
            assert!(first.iter().any(|f| f == n), "{n} in {first:?}");
        }
        let cpu = |r: &prometheus::Registry| {
            r.gather()
                .iter()
                .find(|f| f.name() == "process_cpu_seconds_total")
                .map(|f| f.get_metric()[0].get_counter().get_value())
                .unwrap()
        };
        let a = cpu(&r);
        // Burn some CPU so the kernel's count moves.
        let mut x = 0u64;
        let until = std::time::Instant::now() + std::time::Duration::from_millis(50);
        while std::time::Instant::now() < until {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu(&r) >= a);
        let info = r
            .gather()
            .into_iter()
            .find(|f| f.name() == "gofe_build_info")
            .unwrap();
        let m = &info.get_metric()[0];
        assert_eq!(m.get_gauge().get_value(), 1.0);
        let labels: Vec<(String, String)> = m
            .get_label()
            .iter()
            .map(|l| (l.name().to_owned(), l.value().to_owned()))
            .collect();
        assert!(labels.contains(&("component".into(), "proxy".into())));
        assert!(labels.contains(&("version".into(), env!("CARGO_PKG_VERSION").into())));
    }
}
