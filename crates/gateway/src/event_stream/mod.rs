//! Following and publishing web-chat session events (see [`crate::events`]): the hub that wakes
//! open event streams when a session has news, and the publisher a turn writes typing and the
//! model's deltas through (the SSE endpoints themselves are `channels::webchat_events` and
//! `http::console`), and the answer both give.

pub mod hub;
pub mod publisher;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use std::convert::Infallible;
use std::time::Duration;

/// A server-sent events answer that proxies pass on at once: comment lines every `keep_alive`
/// keep idle connections open, and `X-Accel-Buffering: no` stops nginx from buffering events.
pub fn unbuffered_sse<S>(events: S, keep_alive: Duration) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
