//! What the benchmarks share: knobs from the environment, latency histograms, the runtime they
//! drive load from, and where results are written.

use hdrhistogram::Histogram;
use serde_json::Value;

/// An integer knob from the environment, or `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A latency histogram in microseconds, from 1 µs to 2 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram")
}

/// A quantile of a microsecond histogram, in milliseconds.
pub fn ms(h: &Histogram<u64>, quantile: f64) -> f64 {
    h.value_at_quantile(quantile) as f64 / 1000.0
}

/// The middle value of several rounds' figures (the upper middle of an even count).
#[allow(dead_code)] // not every benchmark takes several rounds
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The load generator's runtime: two threads, like the machine's two cores it shares.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Writes `target/bench/<name>.json` and `<name>.md`, and prints the Markdown.
pub fn write_results(name: &str, report: &Value, markdown: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    let json = serde_json::to_string_pretty(report).expect("json");
    std::fs::write(dir.join(format!("{name}.json")), json).expect("write");
    std::fs::write(dir.join(format!("{name}.md")), markdown).expect("write");
    println!("\n{markdown}");
}
