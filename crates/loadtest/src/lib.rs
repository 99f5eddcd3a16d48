//! clawgate's load generator (`clawgate loadtest`, `clawgate capacity`).
//!
//! Simulated customers write to a gateway the way VeloCity's customers do: multi-turn
//! conversations over WhatsApp (signed webhooks), Telegram and web chat, 55 % tracking, 30 %
//! delivery estimates and 15 % complaints, with think time between messages. Every message is
//! checked for exactly one reply that shows the conversation's context, so a run proves (or
//! disproves) that nothing accepted is lost, nothing is answered twice and no customer has to
//! repeat themselves, also while replicas, Redis or the model fail (`--chaos`). The report has
//! throughput, acknowledgement and end-to-end latency (HDR histograms), per-replica turns, memory
//! and CPU, and the load generator's own CPU.
//!
//! Start at [`run::run`] for one run, [`capacity::find`] for the capacity search and
//! [`capacity::table`] for the planning table.

pub mod capacity;
pub mod chaos;
pub mod collect;
pub mod customer;
pub mod monitor;
pub mod options;
pub mod plan;
pub mod progress;
pub mod report;
pub mod run;
pub mod scenario;
pub mod stats;
pub mod target;

pub use plan::Plan;
pub use report::Report;
