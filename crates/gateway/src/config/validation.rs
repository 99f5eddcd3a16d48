//! Checks of single values that several sections share: URLs, replica ids, browser origins.

use super::reader::Reader;

/// An endpoint must be an absolute http(s) URL; an empty one is left to the caller.
pub(crate) fn check_endpoint(r: &mut Reader, endpoint: &str, path: &str) {
    if endpoint.is_empty() {
        return;
    }
    match reqwest::Url::parse(endpoint) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        _ => r.error(
            path,
            format!("expected an http:// or https:// URL, found \"{endpoint}\""),
        ),
    }
}

/// A replica id names Redis consumers and reply channels: short, no spaces or separators.
pub(crate) fn check_replica_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected 1 to 64 letters, digits, '-', '_' or '.', found \"{id}\""
        ))
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing after (no path, no slash).
pub(crate) fn check_origin(origin: &str) -> Result<(), String> {
    let valid = origin.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme, "http" | "https")
            && !rest.is_empty()
            && !rest.contains(['/', '?', '#', '*'])
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "expected an origin such as \"https://track.example.nl\" (scheme and host, no path), found \"{origin}\""
        ))
    }
}
