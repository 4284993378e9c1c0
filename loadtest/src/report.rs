//! What a run found: counts, latency percentiles per interaction kind,
//! errors by kind, the node's own figures before and after, and a
//! timeline; as text, JSON and an SVG chart.

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::client::NodeMetrics;

/// One second of the run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub t: f64,
    pub sent_per_s: f64,
    pub replies_per_s: f64,
    pub reply_p50_ms: f64,
    pub reply_p99_ms: f64,
}

/// The version of the JSON reports' layout; raised when a field changes
/// meaning or goes away (new fields do not raise it).
pub const SCHEMA_VERSION: u32 = 2;

/// A JSON report with what a machine reading it needs to compare runs:
/// the layout version, the tool and node versions, when it started, and
/// the command line (the options used).
pub fn envelope(
    command: &str,
    started_at: std::time::SystemTime,
    node_version: Option<String>,
    body: Value,
) -> Value {
    let started = started_at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut v = json!({
        "schema_version": SCHEMA_VERSION,
        "tool": "threadline-loadtest",
        "tool_version": env!("CARGO_PKG_VERSION"),
        "node_version": node_version,
        "command": command,
        "options": std::env::args().skip(1).collect::<Vec<_>>(),
        "started_at": chrono::DateTime::<chrono::Utc>::from(std::time::UNIX_EPOCH + started)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    if let (Value::Object(o), Value::Object(b)) = (&mut v, body) {
        o.extend(b);
    }
    v
}

pub struct Report {
    pub scenario: String,
    pub label: String,
    pub model: String,
    pub seconds: f64,
    pub journeys: u64,
    pub sent: u64,
    pub acked: u64,
    pub replies: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub extra: u64,
    pub offers_accepted: u64,
    pub errors: BTreeMap<String, u64>,
    pub latencies: BTreeMap<&'static str, Histogram<u64>>,
    pub node_before: NodeMetrics,
    pub node_after: NodeMetrics,
    pub timeline: Vec<Sample>,
    pub verified: u64,
    pub verify_failures: Vec<String>,
}

/// Node series shown before and after (their growth over the run).
const NODE_SERIES: [&str; 6] = [
    "threadline_messages_ingested_total",
    "threadline_outbound_sent_total",
    "threadline_webhooks_rejected_total",
    "threadline_gateway_busy_total",
    "threadline_conversations_resident",
    "threadline_process_resident_memory_bytes",
];

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

impl Report {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The worst p99 of the inbound-to-reply latencies (of the
    /// acknowledgements, when no reply is expected).
    pub fn p99_reply_ms(&self) -> f64 {
        let replies = self.latencies.keys().any(|k| k.ends_with(".reply"));
        let kind = if replies { ".reply" } else { ".ack" };
        self.latencies
            .iter()
            .filter(|(k, _)| k.ends_with(kind))
            .map(|(_, h)| ms(h, 0.99))
            .fold(0.0, f64::max)
    }

    /// No lost or duplicated message, and transcripts that check out.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.verify_failures.is_empty()
    }

    fn node(&self, name: &str) -> (f64, f64) {
        (self.node_before.value(name), self.node_after.value(name))
    }

    pub fn text(&self, rss: Option<f64>) -> String {
        let mut o = String::new();
        let rate = |n: u64| n as f64 / self.seconds.max(1e-9);
        o.push_str(&format!(
            "\n== {} ({}, {} model, {:.1} s) ==\n",
            self.scenario, self.label, self.model, self.seconds
        ));
        o.push_str(&format!(
            "journeys {}  messages sent {} ({:.0}/s)  acknowledged {}  replies {} ({:.0}/s)\n",
            self.journeys,
            self.sent,
            rate(self.sent),
            self.acked,
            self.replies,
            rate(self.replies)
        ));
        o.push_str(&format!(
            "lost {}  duplicated {}  extra (not expected, not lost) {}  agent offers accepted {}\n",
            self.lost, self.duplicated, self.extra, self.offers_accepted
        ));
        o.push_str(&format!(
            "{:<30} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        ));
        for (k, h) in &self.latencies {
            o.push_str(&format!(
                "{:<30} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
                k,
                h.len(),
                ms(h, 0.5),
                ms(h, 0.9),
                ms(h, 0.99),
                ms(h, 0.999),
                h.max() as f64 / 1000.0
            ));
        }
        if self.errors.is_empty() {
            o.push_str("errors: none\n");
        } else {
            for (k, n) in &self.errors {
                o.push_str(&format!("error {k}: {n}\n"));
            }
        }
        o.push_str("node /metrics (before -> after):\n");
        for name in NODE_SERIES {
            let (b, a) = self.node(name);
            if !(b.is_nan() && a.is_nan()) {
                o.push_str(&format!("  {name} {b} -> {a}\n"));
            }
        }
        if let Some(r) = rss {
            o.push_str(&format!(
                "node RSS at the end: {:.0} MiB\n",
                r / (1 << 20) as f64
            ));
        }
        o.push_str(&format!(
            "transcripts checked over REST: {}, failures: {}\n",
            self.verified,
            self.verify_failures.len()
        ));
        for f in self.verify_failures.iter().take(10) {
            o.push_str(&format!("  {f}\n"));
        }
        o.push_str(if self.passed() {
            "PASS: every expected reply arrived once\n"
        } else {
            "FAIL: messages were lost or duplicated\n"
        });
        o
    }

    pub fn json(&self, rss: Option<f64>) -> Value {
        let lat: serde_json::Map<String, Value> = self
            .latencies
            .iter()
            .map(|(k, h)| {
                (
                    k.to_string(),
                    json!({"count": h.len(), "p50_ms": ms(h, 0.5), "p90_ms": ms(h, 0.9),
                           "p99_ms": ms(h, 0.99), "p999_ms": ms(h, 0.999),
                           "max_ms": h.max() as f64 / 1000.0}),
                )
            })
            .collect();
        let node: serde_json::Map<String, Value> = NODE_SERIES
            .iter()
            .map(|n| {
                let (b, a) = self.node(n);
                let f = |x: f64| if x.is_nan() { Value::Null } else { json!(x) };
                (n.to_string(), json!({"before": f(b), "after": f(a)}))
            })
            .collect();
        json!({
            "scenario": self.scenario, "label": self.label, "model": self.model,
            "seconds": self.seconds, "journeys": self.journeys, "sent": self.sent,
            "acknowledged": self.acked, "replies": self.replies, "lost": self.lost,
            "duplicated": self.duplicated, "extra": self.extra,
            "offers_accepted": self.offers_accepted,
            "messages_per_second": self.sent as f64 / self.seconds.max(1e-9),
            "errors": self.errors, "latency": lat, "node": node,
            "node_rss_bytes": rss,
            "verified": self.verified, "verify_failures": self.verify_failures,
            "passed": self.passed(),
            "timeline": self.timeline.iter().map(|s| json!({"t": s.t, "sent_per_s": s.sent_per_s,
                "replies_per_s": s.replies_per_s, "reply_p50_ms": s.reply_p50_ms,
                "reply_p99_ms": s.reply_p99_ms})).collect::<Vec<_>>(),
        })
    }
}

/// Throughput (top: messages sent and replies received per second) and
/// reply latency (bottom: p50 and p99 per second) over time, phases one
/// after another on one time axis, with a title, legends and both axes
/// labelled.
pub fn chart(reports: &[Report], path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let scenario = reports.first().map_or("", |r| r.scenario.as_str());
    let root = root.titled(
        &format!("threadline-loadtest: {scenario}"),
        ("sans-serif", 22),
    )?;
    let (top, bottom) = root.split_vertically(340);
    type Line = Vec<(f64, f64)>;
    struct Phase {
        label: String,
        sent: Line,
        replies: Line,
        p50: Line,
        p99: Line,
    }
    let mut offset = 0.0;
    let mut phases = Vec::new();
    for r in reports {
        let line = |f: fn(&Sample) -> f64| -> Line {
            r.timeline.iter().map(|s| (offset + s.t, f(s))).collect()
        };
        phases.push(Phase {
            label: r.label.clone(),
            sent: line(|s| s.sent_per_s),
            replies: line(|s| s.replies_per_s),
            p50: line(|s| s.reply_p50_ms),
            p99: line(|s| s.reply_p99_ms),
        });
        offset += r.timeline.last().map_or(0.0, |s| s.t);
    }
    let t_max = offset.max(1.0);
    let top_of = |f: fn(&Phase) -> [&Line; 2]| {
        phases
            .iter()
            .flat_map(|p| f(p).into_iter().flat_map(|l| l.iter().map(|x| x.1)))
            .fold(1.0, f64::max)
            * 1.15
    };
    let y1 = top_of(|p| [&p.sent, &p.replies]);
    let y2 = top_of(|p| [&p.p50, &p.p99]);
    let mut c1 = ChartBuilder::on(&top)
        .caption("throughput", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y1)?;
    c1.configure_mesh()
        .x_desc("seconds since start")
        .y_desc("per second")
        .draw()?;
    let mut c2 = ChartBuilder::on(&bottom)
        .caption("inbound-to-reply latency", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y2)?;
    c2.configure_mesh()
        .x_desc("seconds since start")
        .y_desc("milliseconds")
        .draw()?;
    let several = phases.len() > 1;
    for (i, p) in phases.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let name = |what: &str| match several {
            true => format!("{what} ({})", p.label),
            false => what.to_owned(),
        };
        let solid = color.stroke_width(2);
        let thin = BLACK.mix(0.7).stroke_width(2);
        c1.draw_series(LineSeries::new(p.sent, solid))?
            .label(name("messages sent/s"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], solid));
        c1.draw_series(DashedLineSeries::new(p.replies, 6, 4, thin))?
            .label(name("replies/s"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], thin));
        c2.draw_series(LineSeries::new(p.p99, solid))?
            .label(name("p99"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], solid));
        c2.draw_series(DashedLineSeries::new(p.p50, 6, 4, thin))?
            .label(name("p50"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], thin));
    }
    for c in [&mut c1, &mut c2] {
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// The median of `v` (the mean of the middle two for an even count; 0 for
/// none).
pub fn median(v: &[f64]) -> f64 {
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_median_of_odd_and_even_counts() {
        assert_eq!(super::median(&[0.5, 0.1, 0.4]), 0.4);
        assert!((super::median(&[0.5, 0.1, 0.4, 0.2]) - 0.3).abs() < 1e-12);
        assert_eq!(super::median(&[]), 0.0);
    }
}
