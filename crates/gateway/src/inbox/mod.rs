//! The durable inbox: the `oc:inbox` stream and its consumer group, as seen by the workers that
//! consume it (ingress writes to it through [`crate::state::StateStore::accept`]).

pub mod dead_letters;
pub mod redis;
