//! A server-sent-events client for the tests: reads `id:`, `event:` and `data:` fields off a
//! streaming response as a browser's `EventSource` does, one event per blank line.

use reqwest::Response;
use serde_json::Value;
use std::time::Duration;

/// One received event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: String,
    pub name: String,
    pub data: Value,
}

/// An open event stream.
pub struct SseStream {
    response: Response,
    pending: String,
    /// The last id received, as `EventSource` keeps it for `Last-Event-ID`.
    pub last_id: String,
}

impl SseStream {
    /// Opens `url` with an optional `Last-Event-ID`; panics unless it answers 200
    /// `text/event-stream`.
    pub async fn open(http: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> SseStream {
        match SseStream::try_open(http, url, last_event_id).await {
            Ok(stream) => stream,
            Err(why) => panic!("events of {url}: {why}"),
        }
    }

    /// The same, with why it could not be opened (a replica gone, an HTTP error) instead of a
    /// panic, for clients that reconnect.
    pub async fn try_open(
        http: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> Result<SseStream, String> {
        let mut request = http.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("HTTP {}", response.status()));
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !content_type.starts_with("text/event-stream") {
            return Err(format!("content type {content_type}"));
        }
        Ok(SseStream {
            response,
            pending: String::new(),
            last_id: last_event_id.unwrap_or("").to_string(),
        })
    }

    /// The next event, or `None` when the stream ended or nothing came within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.parse_one() {
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await;
            match chunk {
                Ok(Ok(Some(bytes))) => self.pending.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Events until one named `name` (included), failing after `timeout`.
    pub async fn until(&mut self, name: &str, timeout: Duration) -> Vec<SseEvent> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(event) => {
                    let done = event.name == name;
                    seen.push(event);
                    if done {
                        return seen;
                    }
                }
                None => panic!("no `{name}` event within {timeout:?}; got {seen:?}"),
            }
        }
    }

    fn parse_one(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.pending.find("\n\n")?;
            let block: String = self.pending.drain(..end + 2).collect();
            let (mut id, mut name, mut data) = (None, String::from("message"), String::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim_start().to_string());
                } else if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim_start().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            // Comments (keep-alives) and retry-only blocks carry no event.
            if data.is_empty() {
                continue;
            }
            let id = id.expect("every event carries an id");
            self.last_id = id.clone();
            return Some(SseEvent {
                id,
                name,
                data: serde_json::from_str(&data).expect("event data is JSON"),
            });
        }
    }
}
