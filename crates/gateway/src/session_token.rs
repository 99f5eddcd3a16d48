//! Web-chat session tokens: a session id is the server's (random, unguessable), and every call
//! on the session carries a token that proves the caller was given it. A token is
//! `v1.<expiry, Unix seconds>.<HMAC-SHA256 of "v1.<session>.<expiry>", hex>`, so any replica
//! checks it without a round trip to Redis; the key is `webchat.tokenSecret`, or a random key
//! the replicas share in Redis.

use crate::state::{StateError, StateStore};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::OnceCell;

/// The name of the shared key in Redis (`oc:secret:{webchat-session-tokens}`).
const SHARED_KEY: &str = "webchat-session-tokens";

/// Why a token does not open a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// No token, or not one of ours.
    Malformed,
    /// Its time is up: the widget asks for a new session.
    Expired,
    /// Signed for another session, or not by us.
    Mismatch,
}

impl TokenError {
    /// What the 401 says.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => {
                "this session needs its token: `Authorization: Bearer <token>` from POST /v1/webchat/sessions"
            }
            TokenError::Expired => "the session's token has expired: start a new session",
            TokenError::Mismatch => "the token is not this session's",
        }
    }
}

/// The key tokens are signed with: the configured secret, else the replicas' shared one, read
/// from the store once and kept (so tokens still check while Redis is away).
#[derive(Default)]
pub struct TokenKey {
    shared: OnceCell<Vec<u8>>,
}

impl TokenKey {
    /// The key to use now. `shared` says `store` is the one the replicas share (Redis): only
    /// its key is kept. A replica that never reached Redis signs with a key of its own, valid
    /// on it alone, until Redis answers.
    pub async fn get(
        &self,
        configured: Option<&SecretString>,
        store: &dyn StateStore,
        shared: bool,
    ) -> Result<Vec<u8>, StateError> {
        if let Some(secret) = configured {
            return Ok(secret.expose_secret().as_bytes().to_vec());
        }
        if let Some(key) = self.shared.get() {
            return Ok(key.clone());
        }
        if !shared {
            return store.shared_secret(SHARED_KEY).await;
        }
        self.shared
            .get_or_try_init(|| store.shared_secret(SHARED_KEY))
            .await
            .cloned()
    }
}

fn signature(key: &[u8], session: &str, expires: u64) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(format!("v1.{session}.{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A token for `session`, valid until `expires` (Unix seconds).
pub fn mint(key: &[u8], session: &str, expires: u64) -> String {
    format!("v1.{expires}.{}", signature(key, session, expires))
}

/// Whether `token` opens `session` at `now` (Unix seconds). Compared in constant time.
pub fn verify(key: &[u8], session: &str, token: &str, now: u64) -> Result<(), TokenError> {
    let mut parts = token.splitn(3, '.');
    let (Some("v1"), Some(expires), Some(presented)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    let expected = signature(key, session, expires);
    use subtle::ConstantTimeEq;
    if !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
        return Err(TokenError::Mismatch);
    }
    if now >= expires {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// A new session id: 128 random bits, URL-safe.
pub fn new_session_id() -> String {
    format!("ws_{}", hex::encode(rand::random::<[u8; 16]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_opens_its_own_session_until_it_expires() {
        let key = b"key one";
        let token = mint(key, "ws_a", 1_000);
        assert_eq!(verify(key, "ws_a", &token, 999), Ok(()));
        assert_eq!(verify(key, "ws_a", &token, 1_000), Err(TokenError::Expired));
        assert_eq!(verify(key, "ws_b", &token, 999), Err(TokenError::Mismatch));
        assert_eq!(
            verify(b"key two", "ws_a", &token, 999),
            Err(TokenError::Mismatch)
        );
        // A later expiry cannot be written in: the signature covers it.
        let stretched = token.replacen("v1.1000.", "v1.9999.", 1);
        assert_eq!(
            verify(key, "ws_a", &stretched, 999),
            Err(TokenError::Mismatch)
        );
        for junk in ["", "v1", "v2.1000.ab", "v1.soon.ab", "Bearer x"] {
            assert!(verify(key, "ws_a", junk, 999).is_err(), "{junk}");
        }
    }

    #[test]
    fn session_ids_are_unguessable_and_valid_ids() {
        let (a, b) = (new_session_id(), new_session_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 32);
        assert!(crate::channels::check_id("session_id", &a, false).is_ok());
    }
}
