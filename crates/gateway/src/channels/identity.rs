//! Which conversation a customer's message belongs to when the platform names the customer in
//! more than one way.
//!
//! WhatsApp names a customer by phone number and, since 2026, by a business-scoped user id
//! (BSUID); a customer who adopts a username stops sharing the number, and one who changes
//! number gets a new BSUID. A conversation keeps the key it started with: every identity a
//! message carries is linked (in the state store, for [`IDENTITY_TTL`]) to the conversation it
//! was answered in, and a later message carrying any linked identity continues that
//! conversation. Links are only written where they are missing or point elsewhere, so a known
//! customer costs one read per batch and no write.
//!
//! [`IDENTITY_TTL`]: crate::state::IDENTITY_TTL

use crate::ingress::Ingress;
use crate::message::Channel;
use std::collections::HashMap;

/// The conversation user for a message carrying `identities` (most preferred first, e.g. the
/// phone number, then the BSUID), given what each is `linked` to: the first linked user, else
/// the first identity. Also the links that are missing (identity → that user).
pub fn resolve(
    identities: &[String],
    linked: &[Option<String>],
) -> (String, Vec<(String, String)>) {
    let user = linked
        .iter()
        .flatten()
        .next()
        .or(identities.first())
        .cloned()
        .unwrap_or_default();
    let missing = missing_links(identities, linked, &user);
    (user, missing)
}

/// The links of `identities` to `user` that are not there yet (`linked` says what each is linked
/// to now).
pub fn missing_links(
    identities: &[String],
    linked: &[Option<String>],
    user: &str,
) -> Vec<(String, String)> {
    identities
        .iter()
        .zip(linked)
        .filter(|(_, link)| link.as_deref() != Some(user))
        .map(|(identity, _)| (identity.clone(), user.to_string()))
        .collect()
}

/// The identities' links, read in one round trip, through the store that answers now. A store
/// that cannot answer links nothing: the message is keyed on its own identity and still
/// accepted (or refused by the accept itself).
pub async fn linked(
    ingress: &Ingress,
    channel: Channel,
    identities: Vec<String>,
) -> HashMap<String, String> {
    if identities.is_empty() {
        return HashMap::new();
    }
    let (store, _) = ingress.current_store();
    match store.linked_identities(channel, &identities).await {
        Ok(users) => identities
            .into_iter()
            .zip(users)
            .filter_map(|(identity, user)| Some((identity, user?)))
            .collect(),
        Err(e) => {
            tracing::warn!(%channel, error = %e, "identity links could not be read; messages are keyed on the identity they carry");
            HashMap::new()
        }
    }
}

/// Writes `links` through the store that answers now; a failure is logged, not fatal (the next
/// message writes them again).
pub async fn link(ingress: &Ingress, channel: Channel, links: &[(String, String)]) {
    if links.is_empty() {
        return;
    }
    let (store, _) = ingress.current_store();
    if let Err(e) = store.link_identities(channel, links).await {
        tracing::warn!(%channel, error = %e, "identity links could not be written; the next message tries again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_new_customer_is_keyed_on_the_preferred_identity_and_every_identity_is_linked_to_it() {
        let (user, links) = resolve(&ids(&["31612345678", "NL.1"]), &[None, None]);
        assert_eq!(user, "31612345678");
        assert_eq!(
            links,
            vec![
                ("31612345678".into(), "31612345678".into()),
                ("NL.1".into(), "31612345678".into())
            ]
        );
    }

    #[test]
    fn a_customer_who_hides_their_number_continues_the_conversation_of_that_number() {
        let (user, links) = resolve(&ids(&["NL.1"]), &[Some("31612345678".into())]);
        assert_eq!(user, "31612345678");
        assert!(links.is_empty(), "a known link is not written again");
    }

    #[test]
    fn a_new_number_linked_to_an_old_conversation_continues_it() {
        let (user, links) = resolve(
            &ids(&["31699999999", "NL.2"]),
            &[Some("31612345678".into()), None],
        );
        assert_eq!(user, "31612345678");
        assert_eq!(links, vec![("NL.2".into(), "31612345678".into())]);
    }

    #[test]
    fn the_first_identity_wins_when_links_disagree() {
        let (user, _) = resolve(&ids(&["a", "b"]), &[Some("x".into()), Some("y".into())]);
        assert_eq!(user, "x");
    }
}
