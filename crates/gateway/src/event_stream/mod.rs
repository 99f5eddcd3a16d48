//! Following and publishing web-chat session events (see [`crate::events`]): the hub that wakes
//! open event streams when a session has news, and the publisher a turn writes typing and the
//! model's deltas through (the SSE endpoint itself is `channels::webchat_events`).

pub mod hub;
pub mod publisher;
