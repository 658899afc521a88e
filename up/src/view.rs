//! What the user sees: events as they happen and the state once a second, in one of three
//! forms — a live terminal view refreshed in place, plain lines (stdout is not a terminal), or
//! one JSON object per line (`--json`).

use std::io::Write;

use serde_json::{json, Map, Value};

/// How the run is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A live view redrawn in place.
    Terminal,
    /// Event lines, and a status line every 5 s.
    Plain,
    /// One JSON event per line.
    Json,
}

/// One endpoint as the view shows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointRow {
    /// Address.
    pub address: String,
    /// Backend name.
    pub name: String,
    /// Published weight, in hundredths of the base weight.
    pub weight: u32,
    /// Controller state (`serving`, `ejected`, `half_open`, `ramping`, ...).
    pub state: String,
    /// Why.
    pub reason: String,
    /// Share of the last second's answers.
    pub share: f64,
}

/// One second's state.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Seconds since the loop started.
    pub t: f64,
    /// Requests per second offered by the curve.
    pub offered_rps: f64,
    /// Requests answered without a 5xx in the last second.
    pub served_rps: f64,
    /// Latency quantiles of the last second, ms.
    pub p50_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// Failed share of the last second's finished requests.
    pub error_ratio: f64,
    /// Replicas the autoscaler wants.
    pub desired: i32,
    /// Backends in the endpoints.
    pub ready: usize,
    /// Per endpoint.
    pub endpoints: Vec<EndpointRow>,
    /// Whether the proxy has ACKed the controller's latest publication.
    pub proxy_caught_up: bool,
}

/// The event log and the output.
pub struct View {
    mode: Mode,
    /// Every event so far: (t, kind, text).
    pub log: Vec<(f64, String, String)>,
    last_plain_status: f64,
    title: String,
}

impl View {
    /// A view in `mode` for a run called `title`.
    pub fn new(mode: Mode, title: &str) -> View {
        View {
            mode,
            log: Vec::new(),
            last_plain_status: f64::NEG_INFINITY,
            title: title.to_owned(),
        }
    }

    /// Records and shows an event: `kind`, its fields, and a line for people.
    pub fn event(&mut self, t: f64, kind: &str, fields: Value, text: String) {
        match self.mode {
            Mode::Json => {
                let mut obj = Map::new();
                obj.insert("t".into(), json!((t * 10.0).round() / 10.0));
                obj.insert("event".into(), json!(kind));
                if let Value::Object(f) = fields {
                    obj.extend(f);
                }
                println!("{}", Value::Object(obj));
            }
            Mode::Plain => println!("{t:6.1}s  {kind:<14} {text}"),
            Mode::Terminal => {}
        }
        self.log.push((t, kind.to_owned(), text));
    }

    /// Shows the state of the last second.
    pub fn status(&mut self, s: &Status) {
        match self.mode {
            Mode::Json => {
                let endpoints: Vec<Value> = s
                    .endpoints
                    .iter()
                    .map(|e| {
                        json!({"address": e.address, "name": e.name, "weight": e.weight,
                               "state": e.state, "reason": e.reason, "share": round3(e.share)})
                    })
                    .collect();
                println!(
                    "{}",
                    json!({"t": (s.t * 10.0).round() / 10.0, "event": "status",
                           "offered_rps": round3(s.offered_rps), "served_rps": round3(s.served_rps),
                           "p50_ms": round3(s.p50_ms), "p99_ms": round3(s.p99_ms),
                           "error_ratio": round3(s.error_ratio), "replicas_desired": s.desired,
                           "replicas_ready": s.ready, "proxy_caught_up": s.proxy_caught_up,
                           "endpoints": endpoints})
                );
            }
            Mode::Plain => {
                if s.t - self.last_plain_status >= 5.0 {
                    self.last_plain_status = s.t;
                    println!("{:6.1}s  {:<14} {}", s.t, "status", status_line(s));
                }
            }
            Mode::Terminal => self.draw(s),
        }
        let _ = std::io::stdout().flush();
    }

    /// After the run: in the terminal view, what happened and when, as plain lines below it.
    pub fn finish(&self) {
        if self.mode == Mode::Terminal {
            println!("\nwhat happened:");
            for (t, kind, text) in &self.log {
                println!("{t:6.1}s  {kind:<14} {text}");
            }
        }
    }

    fn draw(&self, s: &Status) {
        use crossterm::{cursor, terminal, QueueableCommand};
        let (cols, rows) = terminal::size().unwrap_or((100, 30));
        let mut out = std::io::stdout();
        let _ = out.queue(cursor::MoveTo(0, 0));
        let _ = out.queue(terminal::Clear(terminal::ClearType::All));
        for line in self.frame(s, usize::from(cols), usize::from(rows)) {
            let _ = writeln!(out, "{line}\r");
        }
    }

    /// The terminal view of `s` for a `cols` × `rows` terminal: a header, the status line,
    /// the endpoint table and as many of the latest events as fit, each line clipped.
    pub fn frame(&self, s: &Status, cols: usize, rows: usize) -> Vec<String> {
        let width = cols.max(40);
        let mut lines = vec![
            format!(
                "gofe up · {} · {:.0}s   (Ctrl-C stops everything)",
                self.title, s.t
            ),
            status_line(s),
            String::new(),
            format!(
                "{:<18} {:<8} {:>7} {:>6}  {:<10} why",
                "endpoint", "backend", "weight", "share", "state"
            ),
        ];
        for e in &s.endpoints {
            lines.push(format!(
                "{:<18} {:<8} {:>7.2} {:>5.0}%  {:<10} {}",
                e.address,
                e.name,
                f64::from(e.weight) / 100.0,
                e.share * 100.0,
                e.state,
                e.reason
            ));
        }
        lines.push(String::new());
        lines.push("events".into());
        let room = rows.saturating_sub(lines.len() + 1).max(3);
        for (t, kind, text) in self.log.iter().rev().take(room).rev() {
            lines.push(format!("{t:6.1}s  {kind:<14} {text}"));
        }
        lines
            .into_iter()
            .map(|l| l.chars().take(width - 1).collect())
            .collect()
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The one-line status: load, latency, errors, replicas.
pub fn status_line(s: &Status) -> String {
    format!(
        "offered {:.0} req/s · served {:.0} req/s · p50 {:.0} ms · p99 {:.0} ms · errors {:.1}% · replicas {} ready / {} desired",
        s.offered_rps,
        s.served_rps,
        s.p50_ms,
        s.p99_ms,
        s.error_ratio * 100.0,
        s.ready,
        s.desired
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terminal_frame_shows_load_endpoints_and_the_latest_events_that_fit() {
        let mut v = View::new(Mode::Terminal, "demo");
        for i in 0..50 {
            v.event(f64::from(i), "scaled", Value::Null, format!("event {i}"));
        }
        let s = Status {
            t: 12.0,
            offered_rps: 40.0,
            served_rps: 39.0,
            desired: 3,
            ready: 2,
            endpoints: vec![EndpointRow {
                address: "127.0.0.1:9102".into(),
                name: "web-2".into(),
                weight: 5,
                state: "half_open".into(),
                reason: "half-open: trial weight".into(),
                share: 0.05,
            }],
            ..Status::default()
        };
        let frame = v.frame(&s, 60, 20);
        assert_eq!(frame.len(), 20 - 1, "the frame fits the terminal");
        assert!(frame[1].starts_with("offered 40 req/s · served 39 req/s"));
        assert!(frame[4].starts_with("127.0.0.1:9102     web-2       0.05     5%  half_open"));
        assert_eq!(frame.last().unwrap(), "  49.0s  scaled         event 49");
        assert!(
            frame.iter().all(|l| l.chars().count() < 60),
            "lines are clipped"
        );
        assert!(
            !frame.iter().any(|l| l.contains("event 30")),
            "only the latest events"
        );
    }
}
