//! `clawgate audit search`: every replica's audit files under `audit.dir` (written and
//! compressed), filtered, oldest first, with sealed texts opened by the customers' keys.

use super::customer_keys;
use super::files::is_audit_file;
use super::record::{AuditRecord, open};
use crate::state::link::RedisLink;
use flate2::read::GzDecoder;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Which records to find; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// `channel:user`.
    pub conversation: Option<String>,
    /// The customer's message id.
    pub message_id: Option<String>,
    /// From this time on (ms since the epoch, inclusive).
    pub since_ms: Option<u64>,
    /// Up to this time (exclusive).
    pub until_ms: Option<u64>,
}

impl Query {
    fn matches(&self, record: &AuditRecord) -> bool {
        self.conversation
            .as_deref()
            .is_none_or(|c| record.conversation == c)
            && self
                .message_id
                .as_deref()
                .is_none_or(|m| record.message_id == m)
            && self.since_ms.is_none_or(|since| record.ts_ms >= since)
            && self.until_ms.is_none_or(|until| record.ts_ms < until)
    }
}

/// What a search found.
#[derive(Debug, Default)]
pub struct Found {
    /// Matching records, oldest first.
    pub records: Vec<AuditRecord>,
    /// Files read.
    pub files: usize,
    /// Lines that were not records (a write cut short by a crash), skipped.
    pub unreadable_lines: usize,
}

/// Reads every audit file under `root` (and its replica folders) for `query`; `link`, when
/// given, opens sealed texts (a record whose key is gone is marked `erased`).
pub async fn search(
    root: &Path,
    query: &Query,
    link: Option<&RedisLink>,
) -> std::io::Result<Found> {
    let root = root.to_path_buf();
    let query_for_files = query.clone();
    let mut found = tokio::task::spawn_blocking(move || read_all(&root, &query_for_files))
        .await
        .map_err(std::io::Error::other)??;
    found.records.sort_by_key(|r| r.ts_ms);
    if let Some(link) = link {
        let mut keys = HashMap::new();
        for record in &mut found.records {
            let Some(sealed) = record.sealed.take() else {
                continue;
            };
            if !keys.contains_key(&record.conversation) {
                let key = customer_keys::fetch(link, &record.conversation)
                    .await
                    .map_err(std::io::Error::other)?;
                keys.insert(record.conversation.clone(), key);
            }
            match keys
                .get(&record.conversation)
                .copied()
                .flatten()
                .and_then(|key| open(&key, &record.conversation, &sealed))
            {
                Some(text) => record.text = Some(text),
                None => record.erased = Some(true),
            }
        }
    }
    Ok(found)
}

fn read_all(root: &Path, query: &Query) -> std::io::Result<Found> {
    let mut paths = audit_files(root)?;
    for entry in std::fs::read_dir(root)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            paths.extend(audit_files(&entry.path())?);
        }
    }
    let mut found = Found::default();
    for path in paths {
        let Ok(file) = std::fs::File::open(&path) else {
            // Deleted by its writer's bounds since it was listed.
            continue;
        };
        let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
            Box::new(GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        found.files += 1;
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else {
                found.unreadable_lines += 1;
                break;
            };
            match serde_json::from_str::<AuditRecord>(&line) {
                Ok(record) if query.matches(&record) => found.records.push(record),
                Ok(_) => {}
                Err(_) if line.trim().is_empty() => {}
                Err(_) => found.unreadable_lines += 1,
            }
        }
    }
    Ok(found)
}

fn audit_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_audit_file(p))
        .collect())
}

/// A time for `--since` / `--until`: RFC 3339 (`2026-12-01T09:00:00Z`), a date
/// (`2026-12-01`, midnight UTC), or a span back from `now_ms` (`90m`, `24h`, `7d`).
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    use time::format_description::well_known::Rfc3339;
    let text = text.trim();
    if let Ok(t) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| format!("{text}: before 1970"));
    }
    if let Ok(t) = time::OffsetDateTime::parse(&format!("{text}T00:00:00Z"), &Rfc3339) {
        return u64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .map_err(|_| format!("{text}: before 1970"));
    }
    let split = text.len().saturating_sub(1);
    let (number, unit) = text.split_at(split);
    let unit_ms = match unit {
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if unit_ms > 0 => Ok(now_ms.saturating_sub(n.saturating_mul(unit_ms))),
        _ => Err(format!(
            "expected a time such as 2026-12-01T09:00:00Z, a date such as 2026-12-01, or a span back such as 24h or 7d; found \"{text}\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_rfc3339_dates_or_spans_back() {
        let now = 1_764_720_000_000;
        assert_eq!(
            parse_time("2025-12-03T00:00:00Z", now),
            Ok(1_764_720_000_000)
        );
        assert_eq!(parse_time("2025-12-03", now), Ok(1_764_720_000_000));
        assert_eq!(parse_time("24h", now), Ok(now - 86_400_000));
        assert_eq!(parse_time("7d", now), Ok(now - 7 * 86_400_000));
        assert!(parse_time("last tuesday", now).is_err());
    }
}
