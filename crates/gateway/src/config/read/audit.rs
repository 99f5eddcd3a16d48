//! The `audit` section: where the audit trail goes and how much disk it may use.

use super::super::reader::{Object, Reader};
use super::super::schema::{AuditConfig, AuditText};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `audit`: off unless `dir` is set; relative folders are resolved against `base_dir`.
pub(super) fn read(r: &mut Reader, root: &Object, base_dir: &Path) -> AuditConfig {
    let empty = Object::new();
    let p = "audit";
    let a = r
        .section(
            root,
            "",
            p,
            &[
                "dir",
                "maxFileBytes",
                "maxTotalBytes",
                "retentionDays",
                "text",
                "queue",
            ],
        )
        .unwrap_or(&empty);
    // An empty string (`${AUDIT_DIR:-}`) means "off".
    let dir = r
        .string_or_empty(a, p, "dir")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { base_dir.join(d) });
    let max_total_bytes = r
        .integer(a, p, "maxTotalBytes", 65_536, 1 << 50, "bytes")
        .unwrap_or(1 << 30);
    let max_file_bytes = r
        .integer(a, p, "maxFileBytes", 4_096, 1 << 40, "bytes")
        .unwrap_or(16 << 20);
    if max_file_bytes > max_total_bytes / 2 {
        r.error(
            "audit.maxFileBytes",
            format!(
                "expected at most half of audit.maxTotalBytes ({} bytes), so an old file can always make room for the one being written; found {max_file_bytes}",
                max_total_bytes / 2
            ),
        );
    }
    let text = match r.choice(a, p, "text", &["full", "hash", "omit"]).as_deref() {
        Some("hash") => AuditText::Hash,
        Some("omit") => AuditText::Omit,
        _ => AuditText::Full,
    };
    AuditConfig {
        dir,
        max_file_bytes,
        max_total_bytes,
        retention: Duration::from_secs(
            r.integer(a, p, "retentionDays", 1, 3_650, "days")
                .unwrap_or(30)
                * 86_400,
        ),
        text,
        queue: r
            .integer(a, p, "queue", 1, 10_000_000, "records")
            .map_or(10_000, |n| n as usize),
    }
}
