//! clawgate: a highly available gateway for AI customer-messaging agents.
//!
//! A replica accepts customer messages (web chat now; WhatsApp and Telegram next), makes them
//! durable in Redis before acknowledging them, answers them with workers that any replica may run,
//! and keeps every conversation in Redis so no customer repeats themselves when a replica dies.
//! Start at [`server::run`]; DESIGN.md explains the whole path.

pub mod app;
pub mod audit;
pub mod background;
pub mod channels;
pub mod classify;
pub mod config;
pub mod config_summary;
pub mod deadletter;
pub mod egress;
pub mod env_vars;
pub mod escalation;
pub mod event_stream;
pub mod events;
pub mod forget;
pub mod http;
pub mod http_client;
pub mod inbox;
pub mod ingress;
pub mod language;
pub mod live;
pub mod llm;
pub mod logging;
pub mod lookup;
pub mod message;
pub mod migrate;
pub mod person_message;
pub mod person_reply;
pub mod replies;
pub mod retry;
pub mod server;
pub mod session_token;
pub mod skills;
pub mod state;
pub mod telemetry;
pub mod worker;

#[cfg(test)]
mod arbitrary;

pub use config::Config;
pub use server::run;
