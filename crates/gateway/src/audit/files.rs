//! A replica's audit files (blocking I/O, run off the async workers): append records to the
//! current file, close and compress it at `audit.maxFileBytes`, delete the oldest closed files so
//! everything stays within `audit.maxTotalBytes`, and files past `audit.retentionDays`.
//!
//! Files are `audit-<ms>.jsonl` while written and `audit-<ms>.jsonl.gz` once closed, in one
//! folder per replica, so replicas sharing a volume never write the same file.

use crate::config::AuditConfig;
use crate::message::now_ms;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// How often files past the retention are looked for.
const RETENTION_CHECK_EVERY: Duration = Duration::from_secs(60);

/// The folder `replica_id` writes in under `root`.
pub fn replica_dir(root: &Path, replica_id: &str) -> PathBuf {
    root.join(replica_id)
}

/// Whether `path` is an audit file (written or closed).
pub fn is_audit_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("audit-") && (name.ends_with(".jsonl") || name.ends_with(".jsonl.gz"))
}

/// What one call of [`AuditFiles::write`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Records on disk.
    pub written: u64,
    /// Records that could not be written.
    pub dropped: u64,
    /// Why, when some could not.
    pub error: Option<String>,
}

/// The file being written.
struct Current {
    path: PathBuf,
    file: File,
    size: u64,
}

/// One replica's files and their bounds.
pub struct AuditFiles {
    dir: PathBuf,
    max_file_bytes: u64,
    max_total_bytes: u64,
    retention: Duration,
    current: Option<Current>,
    /// Closed files, oldest first, with their sizes.
    closed: Vec<(PathBuf, u64)>,
    last_retention_check: Option<SystemTime>,
}

impl AuditFiles {
    /// The files in `dir` (made when first written to); files left by an earlier run count as
    /// closed.
    pub fn open(dir: PathBuf, config: &AuditConfig) -> AuditFiles {
        let mut closed: Vec<(PathBuf, u64)> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| is_audit_file(path))
            .map(|path| {
                let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                (path, size)
            })
            .collect();
        // Names carry the time the file was started: their order is the files' order.
        closed.sort();
        AuditFiles {
            dir,
            max_file_bytes: config.max_file_bytes,
            max_total_bytes: config.max_total_bytes,
            retention: config.retention,
            current: None,
            closed,
            last_retention_check: None,
        }
    }

    /// What the files take now.
    pub fn bytes_on_disk(&self) -> u64 {
        self.closed.iter().map(|(_, size)| size).sum::<u64>()
            + self.current.as_ref().map_or(0, |c| c.size)
    }

    /// Appends `lines` (each ending in a newline), rotating and deleting as the bounds require.
    /// A write that fails is undone (no half line is left) and its records are counted as dropped.
    pub fn write(&mut self, lines: &[Vec<u8>]) -> WriteOutcome {
        let mut outcome = WriteOutcome::default();
        self.apply_retention();
        let mut next = 0;
        while next < lines.len() {
            if let Err(e) = self.ensure_current() {
                outcome.dropped += (lines.len() - next) as u64;
                outcome.error = Some(format!("opening a file in {}: {e}", self.dir.display()));
                break;
            }
            let size = self.current.as_ref().map_or(0, |c| c.size);
            let room = self.max_file_bytes.saturating_sub(size);
            let mut chunk = Vec::new();
            let mut taken = 0;
            while let Some(line) = lines.get(next + taken) {
                let fits = (chunk.len() + line.len()) as u64 <= room;
                // A record longer than a whole file still gets a file of its own.
                let alone_in_a_new_file = taken == 0 && size == 0;
                if !(fits || alone_in_a_new_file) {
                    break;
                }
                chunk.extend_from_slice(line);
                taken += 1;
            }
            if taken == 0 {
                self.rotate();
                continue;
            }
            self.make_room(chunk.len() as u64);
            match self.append(&chunk) {
                Ok(()) => {
                    outcome.written += taken as u64;
                    outcome.error = None;
                }
                Err(e) => {
                    outcome.dropped += taken as u64;
                    outcome.error = Some(format!("writing {}: {e}", self.dir.display()));
                }
            }
            next += taken;
        }
        outcome
    }

    /// Closes the current file (compressed) so the next write starts a new one.
    pub fn rotate(&mut self) {
        let Some(current) = self.current.take() else {
            return;
        };
        drop(current.file);
        let gz = current.path.with_extension("jsonl.gz");
        let closed = match compress(&current.path, &gz) {
            Ok(size) => {
                let _ = std::fs::remove_file(&current.path);
                (gz, size)
            }
            Err(e) => {
                tracing::warn!(file = %current.path.display(), error = %e, "an audit file could not be compressed; it stays as it is");
                let _ = std::fs::remove_file(&gz);
                (current.path, current.size)
            }
        };
        self.closed.push(closed);
    }

    fn ensure_current(&mut self) -> io::Result<()> {
        // A file deleted under the writer (its folder removed by hand, a volume remounted)
        // would swallow records without a word: start a new one where it belongs.
        if self.current.as_ref().is_some_and(|c| !c.path.exists()) {
            tracing::warn!(dir = %self.dir.display(), "the audit file being written is gone; starting a new one");
            self.current = None;
            self.closed.retain(|(path, _)| path.exists());
        }
        if self.current.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let mut started = now_ms();
        let mut path = self.dir.join(format!("audit-{started:013}.jsonl"));
        while path.exists() || path.with_extension("jsonl.gz").exists() {
            started += 1;
            path = self.dir.join(format!("audit-{started:013}.jsonl"));
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        self.current = Some(Current {
            path,
            file,
            size: 0,
        });
        Ok(())
    }

    /// Appends `bytes` to the current file; on failure cuts the file back to where it was.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(current) = self.current.as_mut() else {
            return Err(io::Error::other("no file open"));
        };
        match current.file.write_all(bytes) {
            Ok(()) => {
                current.size += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = current.file.set_len(current.size);
                Err(e)
            }
        }
    }

    /// Deletes the oldest closed files until `extra` more bytes fit within the bound.
    fn make_room(&mut self, extra: u64) {
        while self.bytes_on_disk() + extra > self.max_total_bytes && !self.closed.is_empty() {
            let (oldest, _) = self.closed.remove(0);
            if let Err(e) = std::fs::remove_file(&oldest)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(file = %oldest.display(), error = %e, "an old audit file could not be deleted");
            }
        }
    }

    /// Deletes closed files last written longer ago than the retention.
    fn apply_retention(&mut self) {
        let now = SystemTime::now();
        if self
            .last_retention_check
            .is_some_and(|at| now.duration_since(at).unwrap_or_default() < RETENTION_CHECK_EVERY)
        {
            return;
        }
        self.last_retention_check = Some(now);
        let retention = self.retention;
        self.closed.retain(|(path, _)| {
            let expired = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|at| now.duration_since(at).unwrap_or_default() > retention);
            if expired {
                let _ = std::fs::remove_file(path);
            }
            !expired
        });
    }
}

/// Writes `plain` gzipped to `gz`; the compressed size.
fn compress(plain: &Path, gz: &Path) -> io::Result<u64> {
    let mut input = File::open(plain)?;
    let mut encoder = GzEncoder::new(File::create(gz)?, Compression::fast());
    io::copy(&mut input, &mut encoder)?;
    let file = encoder.finish()?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuditConfig, AuditText};

    fn config(max_file: u64, max_total: u64) -> AuditConfig {
        AuditConfig {
            dir: None,
            max_file_bytes: max_file,
            max_total_bytes: max_total,
            retention: Duration::from_secs(86_400),
            text: AuditText::Full,
            queue: 100,
        }
    }

    fn line(i: usize) -> Vec<u8> {
        // Random-looking content, so compression cannot hide the bound.
        let noise: String = (0..80)
            .map(|j| char::from(b'a' + ((i * 31 + j * 17) % 26) as u8))
            .collect();
        format!("{{\"i\":{i},\"noise\":\"{noise}\"}}\n").into_bytes()
    }

    fn on_disk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn files_rotate_by_size_are_compressed_and_the_oldest_go_first_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = AuditFiles::open(dir.path().join("r1"), &config(4_096, 16_384));
        for i in 0..2_000 {
            let outcome = files.write(&[line(i)]);
            assert_eq!(outcome.written, 1, "{outcome:?}");
            assert!(
                on_disk(&dir.path().join("r1")) <= 16_384,
                "over the bound after record {i}"
            );
        }
        let names: Vec<String> = std::fs::read_dir(dir.path().join("r1"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n.ends_with(".jsonl.gz")), "{names:?}");
        assert_eq!(names.iter().filter(|n| n.ends_with(".jsonl")).count(), 1);
        assert_eq!(files.bytes_on_disk(), on_disk(&dir.path().join("r1")));
    }

    #[test]
    fn a_folder_removed_while_written_is_made_again_and_no_record_vanishes() {
        let dir = tempfile::tempdir().unwrap();
        let replica = dir.path().join("r1");
        let mut files = AuditFiles::open(replica.clone(), &config(4_096, 16_384));
        assert_eq!(files.write(&[line(1)]).written, 1);
        std::fs::remove_dir_all(&replica).unwrap();
        assert_eq!(files.write(&[line(2)]).written, 1);
        let contents: String = std::fs::read_dir(&replica)
            .unwrap()
            .flatten()
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
            .collect();
        assert!(contents.contains("\"i\":2"), "{contents}");
    }

    #[test]
    fn a_folder_that_cannot_be_made_drops_the_records_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"x").unwrap();
        let mut files = AuditFiles::open(blocker.join("r1"), &config(4_096, 16_384));
        let outcome = files.write(&[line(1), line(2)]);
        assert_eq!((outcome.written, outcome.dropped), (0, 2));
        assert!(outcome.error.is_some());
    }
}
