//! Each customer's audit key, kept in Redis (`oc:auditkey:{channel:user}`) beside their
//! conversation: the writer seals texts with it, `audit search` opens them, and `forget` deletes
//! it, which leaves every sealed text of that customer unreadable.

use super::record::CustomerKey;
use crate::state::keys;
use crate::state::link::RedisLink;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long the writer reuses a key before asking Redis again (which also extends its life).
const CACHE_FOR: Duration = Duration::from_secs(300);
/// Keys the writer remembers at most.
const CACHE_MAX: usize = 10_000;

/// The keys of customers, with a cache for the writer.
pub struct CustomerKeys {
    link: Arc<RedisLink>,
    /// A key lives as long as the records it seals (the retention), from its last use.
    ttl: Duration,
    cache: HashMap<String, (CustomerKey, Instant)>,
}

impl CustomerKeys {
    /// Keys in the Redis behind `link`, kept for `retention` after their last use.
    pub fn new(link: Arc<RedisLink>, retention: Duration) -> CustomerKeys {
        CustomerKeys {
            link,
            ttl: retention + Duration::from_secs(86_400),
            cache: HashMap::new(),
        }
    }

    /// The key of `conversation`, made on first use; `None` while Redis cannot be reached (the
    /// record then keeps no text).
    pub async fn key_for(&mut self, conversation: &str) -> Option<CustomerKey> {
        if let Some((key, fetched)) = self.cache.get(conversation)
            && fetched.elapsed() < CACHE_FOR
        {
            return Some(*key);
        }
        let fresh: CustomerKey = rand::random();
        let name = keys::audit_key_of(conversation);
        let mut conn = self.link.connection().ok()?;
        let secs = self.ttl.as_secs();
        // SET NX GET: ours if none existed, else the existing one; either way it lives on.
        let (existing, _): (Option<String>, i64) = redis::pipe()
            .cmd("SET")
            .arg(&name)
            .arg(hex::encode(fresh))
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(secs)
            .cmd("EXPIRE")
            .arg(&name)
            .arg(secs)
            .query_async(&mut conn)
            .await
            .ok()?;
        let key = match existing {
            Some(hex_key) => decode(&hex_key)?,
            None => fresh,
        };
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache
            .insert(conversation.to_string(), (key, Instant::now()));
        Some(key)
    }
}

/// The key of `conversation` as it is now (for reading); `Ok(None)` when there is none (never
/// made, forgotten, or expired).
pub async fn fetch(
    link: &RedisLink,
    conversation: &str,
) -> Result<Option<CustomerKey>, crate::state::StateError> {
    let mut conn = link.connection()?;
    let value: Option<String> = redis::cmd("GET")
        .arg(keys::audit_key_of(conversation))
        .query_async(&mut conn)
        .await
        .map_err(|e| crate::state::link::classify(&e))?;
    Ok(value.as_deref().and_then(decode))
}

/// Deletes the key of `conversation`; true when there was one.
pub async fn shred(link: &RedisLink, conversation: &str) -> Result<bool, crate::state::StateError> {
    let mut conn = link.connection()?;
    let removed: i64 = redis::cmd("DEL")
        .arg(keys::audit_key_of(conversation))
        .query_async(&mut conn)
        .await
        .map_err(|e| crate::state::link::classify(&e))?;
    Ok(removed > 0)
}

fn decode(hex_key: &str) -> Option<CustomerKey> {
    hex::decode(hex_key).ok()?.try_into().ok()
}
