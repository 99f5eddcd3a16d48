//! The result of a run: one JSON document (the contract's fields first), a Markdown report, and
//! an SVG chart of throughput and latency over time with the chaos events marked.
//!
//! The chart is a few dozen lines of SVG written here rather than with a plotting crate: the
//! maintained ones lay out axis text with a font engine and font files, which a CI machine and a
//! read-only container do not have.

use crate::chaos::ChaosRecord;
use crate::monitor::{LoadgenUse, ReplicaUse};
use crate::stats::{ChannelReport, Percentiles, SecondReport};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Latency percentiles as the contract names them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AckPercentiles {
    /// Median, ms.
    pub p50: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Largest, ms.
    pub max: f64,
}

impl From<Percentiles> for AckPercentiles {
    fn from(p: Percentiles) -> AckPercentiles {
        AckPercentiles {
            p50: p.p50,
            p99: p.p99,
            max: p.max,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Messages sent.
    pub sent: u64,
    /// Messages that got their reply.
    pub answered: u64,
    /// Messages that got no reply in time.
    pub lost: u64,
    /// Replies received twice, or stored twice in a web-chat history.
    pub duplicated: u64,
    /// Replies that did not show the conversation's context.
    pub wrong_context: u64,
    /// Failed HTTP attempts (retried as the platforms retry).
    pub errors: u64,
    /// Replies per second over the run.
    pub throughput_per_s: f64,
    /// From sending a message to its reply.
    pub e2e_ms: Percentiles,
    /// From sending a message to the gateway's acknowledgement (webhooks: durable in Redis;
    /// web chat answers with the reply, so its acknowledgement includes the model's time).
    pub ack_ms: AckPercentiles,
    /// Each replica: turns answered, peak memory, CPU.
    pub replicas: Vec<ReplicaUse>,
    /// Whether nothing was lost, duplicated or answered without context.
    pub passed: bool,
    /// The gateway.
    pub target: String,
    /// Customers at once.
    pub customers: usize,
    /// Seconds messages were sent for.
    pub duration_s: f64,
    /// Messages per conversation from the customer.
    pub turns: usize,
    /// Channel shares used, percent.
    pub channels: BTreeMap<String, f64>,
    /// Inquiry mix, percent.
    pub mix: BTreeMap<String, f64>,
    /// Messages never acknowledged by the gateway, whatever the retries.
    pub unaccepted: u64,
    /// Replies whose context nothing in them tells (template answers).
    pub unverified: u64,
    /// Late replies: a reply that came after its customer gave up.
    pub late: u64,
    /// End-to-end minus the mock model's latency, for replies the model wrote.
    pub overhead_ms: Option<Percentiles>,
    /// The mock model's latency during the run, ms.
    pub llm_latency_ms: Option<u64>,
    /// Per channel.
    pub by_channel: BTreeMap<String, ChannelReport>,
    /// Web-chat replies by the replica that produced them.
    pub webchat_by_replica: BTreeMap<String, u64>,
    /// The load generator's own use.
    pub loadgen: LoadgenUse,
    /// Injected failures.
    pub chaos: Vec<ChaosRecord>,
    /// Second by second.
    pub timeline: Vec<SecondReport>,
}

impl Report {
    /// Messages refused or lost over messages sent.
    pub fn error_rate(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            (self.lost + self.unaccepted) as f64 / self.sent as f64
        }
    }

    /// The Markdown report; `chart` is the SVG file's name, linked from it.
    pub fn markdown(&self, chart: Option<&str>) -> String {
        let mut md = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(md, "# clawgate load test: {verdict}\n");
        let _ = writeln!(
            md,
            "{} customers for {:.0} s against {}, {} messages per conversation; channels {}; mix {}.\n",
            self.customers,
            self.duration_s,
            self.target,
            self.turns,
            shares(&self.channels),
            shares(&self.mix)
        );
        let _ = writeln!(md, "| measure | value |\n| --- | ---: |");
        for (name, value) in [
            ("sent", self.sent.to_string()),
            ("answered", self.answered.to_string()),
            ("lost", self.lost.to_string()),
            ("duplicated", self.duplicated.to_string()),
            ("wrong context", self.wrong_context.to_string()),
            ("not accepted", self.unaccepted.to_string()),
            ("failed attempts (retried)", self.errors.to_string()),
            ("context not checkable", self.unverified.to_string()),
            (
                "throughput",
                format!("{:.1} replies/s", self.throughput_per_s),
            ),
            (
                "end to end p50 / p95 / p99 / max",
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1} ms",
                    self.e2e_ms.p50, self.e2e_ms.p95, self.e2e_ms.p99, self.e2e_ms.max
                ),
            ),
            (
                "acknowledgement p50 / p99",
                format!("{:.2} / {:.2} ms", self.ack_ms.p50, self.ack_ms.p99),
            ),
        ] {
            let _ = writeln!(md, "| {name} | {value} |");
        }
        if let (Some(o), Some(latency)) = (&self.overhead_ms, self.llm_latency_ms) {
            let _ = writeln!(
                md,
                "| gateway overhead over the model's {latency} ms, p50 / p99 | {:.1} / {:.1} ms |",
                o.p50, o.p99
            );
        }
        let _ = writeln!(
            md,
            "| load generator CPU | {:.0} % of one core ({} cores in all) |",
            self.loadgen.cpu_percent, self.loadgen.cores
        );
        if !self.by_channel.is_empty() {
            let _ = writeln!(
                md,
                "\n| channel | sent | answered | e2e p50 | e2e p99 | ack p50 | ack p99 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
            );
            for (channel, c) in &self.by_channel {
                let _ = writeln!(
                    md,
                    "| {channel} | {} | {} | {:.1} ms | {:.1} ms | {:.2} ms | {:.2} ms |",
                    c.sent, c.answered, c.e2e_ms.p50, c.e2e_ms.p99, c.ack_ms.p50, c.ack_ms.p99
                );
            }
        }
        if !self.replicas.is_empty() {
            let _ = writeln!(
                md,
                "\n| replica | turns answered | peak RSS | CPU | restarts |\n| --- | ---: | ---: | ---: | ---: |"
            );
            for r in &self.replicas {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} |",
                    r.id,
                    r.answered,
                    r.peak_rss_bytes
                        .map(|b| format!("{:.1} MiB", b as f64 / 1_048_576.0))
                        .unwrap_or_else(|| "?".into()),
                    r.cpu_percent
                        .map(|c| format!("{c:.0} %"))
                        .unwrap_or_else(|| "?".into()),
                    r.restarts
                );
            }
        }
        if !self.chaos.is_empty() {
            let _ = writeln!(md, "\n| at | event | what it did |\n| ---: | --- | --- |");
            for c in &self.chaos {
                let _ = writeln!(md, "| {:.1} s | {} | {} |", c.at_s, c.event, c.outcome);
            }
        }
        if let Some(chart) = chart {
            let _ = writeln!(md, "\n![throughput and latency over time]({chart})");
        }
        md
    }

    /// An SVG chart: replies and messages per second above, p50 and p99 latency below, chaos
    /// events as dashed lines across both.
    pub fn svg(&self) -> String {
        let (width, height) = (900.0, 520.0);
        let (left, right) = (70.0, 20.0);
        let plot_w = width - left - right;
        let panels = [(40.0, 190.0), (290.0, 190.0)];
        let seconds = self.timeline.len().max(1) as f64;
        let x = |t: f64| left + plot_w * t / seconds;
        let mut svg = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
        );
        let series = |values: Vec<f64>| values;
        let throughput = [
            (
                "replies/s",
                "#1f77b4",
                series(self.timeline.iter().map(|s| s.answered as f64).collect()),
            ),
            (
                "messages sent/s",
                "#aaaaaa",
                series(self.timeline.iter().map(|s| s.sent as f64).collect()),
            ),
        ];
        let latency = [
            (
                "p99 end to end (ms)",
                "#d62728",
                series(self.timeline.iter().map(|s| s.p99_ms).collect()),
            ),
            (
                "p50 end to end (ms)",
                "#2ca02c",
                series(self.timeline.iter().map(|s| s.p50_ms).collect()),
            ),
        ];
        for ((top, h), lines) in panels.iter().zip([&throughput[..], &latency[..]]) {
            let max = lines
                .iter()
                .flat_map(|(_, _, v)| v.iter().copied())
                .fold(0.0_f64, f64::max)
                .max(1.0)
                * 1.1;
            let y = |v: f64| top + h - h * v / max;
            let _ = writeln!(
                svg,
                r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{h}" fill="none" stroke="#333"/>"##
            );
            for i in 0..=4 {
                let v = max * f64::from(i) / 4.0;
                let _ = writeln!(
                    svg,
                    r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                    left + plot_w,
                    left - 6.0,
                    y(v) + 4.0,
                    if v >= 100.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.1}")
                    },
                    y = y(v),
                );
            }
            for (i, (name, color, values)) in lines.iter().enumerate() {
                let points: Vec<String> = values
                    .iter()
                    .enumerate()
                    .map(|(t, v)| format!("{:.1},{:.1}", x(t as f64 + 0.5), y(*v)))
                    .collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
                    points.join(" ")
                );
                let _ = writeln!(
                    svg,
                    r#"<text x="{:.1}" y="{:.1}" fill="{color}">{name}</text>"#,
                    left + 10.0 + 180.0 * i as f64,
                    top - 8.0
                );
            }
        }
        let bottom = panels[1].0 + panels[1].1;
        let step = ((seconds / 10.0).ceil()).max(1.0);
        let mut t = 0.0;
        while t <= seconds {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0}s</text>"#,
                x(t),
                bottom + 18.0
            );
            t += step;
        }
        for c in &self.chaos {
            for (at, label) in [(Some(c.at_s), c.event.as_str()), (c.until_s, "end")] {
                let Some(at) = at else { continue };
                let _ = writeln!(
                    svg,
                    r##"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{bottom}" stroke="#ff7f0e" stroke-dasharray="5,4"/><text x="{:.1}" y="{}" fill="#ff7f0e" font-size="11">{}</text>"##,
                    panels[0].0,
                    x(at) + 3.0,
                    panels[0].0 + 12.0,
                    escape(label),
                    x = x(at),
                );
            }
        }
        let _ = writeln!(
            svg,
            r#"<text x="{left}" y="{}" font-size="13">clawgate load test: {} customers, {} sent, {} answered, {} lost, {} duplicated</text>"#,
            height - 8.0,
            self.customers,
            self.sent,
            self.answered,
            self.lost,
            self.duplicated
        );
        svg.push_str("</svg>\n");
        svg
    }
}

fn shares(shares: &BTreeMap<String, f64>) -> String {
    shares
        .iter()
        .map(|(name, percent)| format!("{name} {percent:.0} %"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
