//! The `workers` section: the pool that runs turns and the inbox it reads.

use super::super::reader::{Object, Reader, ms};
use super::super::schema::WorkersConfig;

/// `workers`: concurrency, claim and lease timing, inbox bounds.
pub(super) fn read(r: &mut Reader, root: &Object) -> WorkersConfig {
    let empty = Object::new();
    let w = r
        .section(
            root,
            "",
            "workers",
            &[
                "concurrency",
                "claimIdleMs",
                "maxDeliveries",
                "leaseTtlMs",
                "orderWaitMs",
                "inboxMaxLength",
                "readyMaxLag",
                "memoryQueue",
            ],
        )
        .unwrap_or(&empty);
    WorkersConfig {
        concurrency: r
            .integer(w, "workers", "concurrency", 1, 100_000, "turns at once")
            .unwrap_or(4_096) as usize,
        claim_idle: ms(
            r.integer(w, "workers", "claimIdleMs", 100, 3_600_000, "milliseconds"),
            5_000,
        ),
        max_deliveries: r
            .integer(w, "workers", "maxDeliveries", 1, 1_000, "deliveries")
            .unwrap_or(5),
        lease_ttl: ms(
            r.integer(w, "workers", "leaseTtlMs", 100, 3_600_000, "milliseconds"),
            10_000,
        ),
        order_wait: ms(
            r.integer(w, "workers", "orderWaitMs", 0, 3_600_000, "milliseconds"),
            30_000,
        ),
        inbox_max_length: r
            .integer(w, "workers", "inboxMaxLength", 1, 100_000_000, "entries")
            .unwrap_or(100_000),
        ready_max_lag: r.integer(w, "workers", "readyMaxLag", 1, 100_000_000, "entries"),
        memory_queue: r
            .integer(w, "workers", "memoryQueue", 1, 10_000_000, "messages")
            .unwrap_or(10_000) as usize,
    }
}
