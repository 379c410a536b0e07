//! QEMU trace checks: for some rows, counters the guest prints must equal
//! what the emulated IOMMU saw, counted from QEMU's own trace events. The
//! guest prints `trace-count: <key>=<n>` (totals since boot) before it
//! exits; the row runs with `-trace <event>` for each event and `-D` a trace
//! file next to its log, and passes only if every count matches and the
//! trace holds every line the row requires of it ([`TraceRow::lines`]).

use std::fs;
use std::path::PathBuf;

use crate::systests::SystemTest;
use crate::util;

/// One guest counter and the trace lines that must match it in number.
#[derive(Debug, Clone, Copy)]
pub struct TraceCount {
    /// The guest's key in `trace-count: <key>=<n>`.
    pub key: &'static str,
    /// The QEMU trace event to enable.
    pub event: &'static str,
    /// A line of the trace file counts if it contains this.
    pub line: &'static str,
}

const SMMUV3: &[TraceCount] = &[
    TraceCount {
        key: "cmd_sync",
        event: "smmuv3_cmdq_opcode",
        line: "<--- SMMU_CMD_SYNC",
    },
    TraceCount {
        key: "cmd_tlbi_nh_va",
        event: "smmuv3_cmdq_opcode",
        line: "<--- SMMU_CMD_TLBI_NH_VA",
    },
];

const VTD: &[TraceCount] = &[
    TraceCount {
        key: "wait_descriptors",
        event: "vtd_inv_desc_wait_sw",
        line: "vtd_inv_desc_wait_sw ",
    },
    TraceCount {
        key: "iotlb_page",
        event: "vtd_inv_desc_iotlb_pages",
        line: "vtd_inv_desc_iotlb_pages ",
    },
    TraceCount {
        key: "iotlb_domain",
        event: "vtd_inv_desc_iotlb_domain",
        line: "vtd_inv_desc_iotlb_domain ",
    },
];

const VIRTIO_IOMMU: &[TraceCount] = &[
    TraceCount {
        key: "map",
        event: "virtio_iommu_map",
        line: "virtio_iommu_map domain=",
    },
    TraceCount {
        key: "unmap",
        event: "virtio_iommu_unmap",
        line: "virtio_iommu_unmap domain=",
    },
];

/// Interrupt remapping: the IEC descriptors the driver queued, the
/// interrupts QEMU remapped through the table (a successful IRTE lookup;
/// compatibility-format ones and faults trace no `vtd_ir_remap index`),
/// and the fault records it made.
const VTD_IR: &[TraceCount] = &[
    TraceCount {
        key: "iec",
        event: "vtd_inv_desc_iec",
        line: "vtd_inv_desc_iec ",
    },
    TraceCount {
        key: "ir_remapped",
        event: "vtd_ir_*",
        line: "vtd_ir_remap index ",
    },
    TraceCount {
        key: "ir_faults",
        event: "vtd_frr_new",
        line: "vtd_frr_new ",
    },
];

/// A row with trace checks.
#[derive(Debug, Clone, Copy)]
pub struct TraceRow {
    /// The row's name.
    pub row: &'static str,
    /// Guest counters that must match trace line counts.
    pub counts: &'static [TraceCount],
    /// Strings that must each occur in some line of the trace.
    pub lines: &'static [&'static str],
}

/// The rows with trace checks: one virtio-blk row per backend (and
/// architecture), where every policy's probe runs; and the interrupt
/// remapping row.
const ROWS: &[TraceRow] = &[
    TraceRow {
        row: "smmuv3-edu-aarch64-blk",
        counts: SMMUV3,
        lines: &[],
    },
    TraceRow {
        row: "vtd-edu-x86_64-blk",
        counts: VTD,
        lines: &[],
    },
    TraceRow {
        row: "virtio-iommu-edu-aarch64-blk",
        counts: VIRTIO_IOMMU,
        lines: &[],
    },
    TraceRow {
        row: "virtio-iommu-edu-x86_64-blk",
        counts: VIRTIO_IOMMU,
        lines: &[],
    },
    TraceRow {
        row: "vtd-edu-x86_64-ir",
        counts: VTD_IR,
        // QEMU's view of the scenario: IRTE 0 remapped to vector 0x31 (49),
        // then 0x32 (50), at APIC 0 (edu's MSI names handle 0: 0xfee00010);
        // the wrong requester 00:02.0 (SID 0x10) and the freed entry (SID
        // 0x8) recorded with reasons 0x26 and 0x22.
        lines: &[
            "vtd_ir_enable enable 1",
            "vtd_ir_remap index 0 trigger 0 vector 49 deliver 0 dest 0x0 mode 0",
            "vtd_ir_remap_msi (addr 0xfee00010, data 0x0) -> (addr 0xfee00000, data 0x4031)",
            "vtd_ir_remap index 0 trigger 0 vector 50 deliver 0 dest 0x0 mode 0",
            "vtd_ir_remap_msi (addr 0xfee00010, data 0x0) -> (addr 0xfee00000, data 0x4032)",
            "vtd_frr_new index 0 high 0x2600000010 low 0x0",
            "vtd_frr_new index 0 high 0x2200000008 low 0x0",
            "vtd_ir_enable enable 0",
        ],
    },
];

/// The trace checks of `test` (none for most rows).
fn row(test: &SystemTest) -> Option<&'static TraceRow> {
    ROWS.iter().find(|r| r.row == test.name)
}

/// The trace counts of `test` (none for most rows).
pub fn checks(test: &SystemTest) -> &'static [TraceCount] {
    row(test).map_or(&[], |r| r.counts)
}

/// Where the row's trace goes: `target/xtask/logs/<row>.trace`.
fn trace_path(test: &SystemTest) -> PathBuf {
    let name = util::log_file_name(test.name);
    let stem = name.strip_suffix(".log").unwrap_or(&name);
    util::repo_root()
        .join("target")
        .join("xtask")
        .join("logs")
        .join(format!("{stem}.trace"))
}

/// QEMU arguments for the row's trace events (none without checks).
pub fn args(test: &SystemTest) -> Vec<String> {
    let checks = checks(test);
    if checks.is_empty() {
        return Vec::new();
    }
    let mut events: Vec<&str> = checks.iter().map(|c| c.event).collect();
    events.dedup();
    let mut args = Vec::new();
    for e in events {
        args.push("-trace".to_string());
        args.push(e.to_string());
    }
    args.push("-D".to_string());
    args.push(trace_path(test).display().to_string());
    args
}

/// The trace file is written afresh by each run: remove a stale one first.
pub fn prepare(test: &SystemTest) -> Result<(), String> {
    let path = trace_path(test);
    if checks(test).is_empty() || !path.exists() {
        return Ok(());
    }
    fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The guest's `trace-count: <key>=<n>` value, if it printed one.
fn guest_count(serial: &[String], key: &str) -> Option<u64> {
    let prefix = format!("trace-count: {key}=");
    serial.iter().rev().find_map(|line| {
        let at = line.find(&prefix)?;
        line[at + prefix.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

/// Compares every check of the row: a summary, or every mismatch.
pub fn verify(test: &SystemTest, serial: &[String]) -> Result<Option<String>, String> {
    let Some(row) = row(test) else {
        return Ok(None);
    };
    let path = trace_path(test);
    let trace = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let (mut matched, mut wrong) = (Vec::new(), Vec::new());
    for line in row.lines {
        if !trace.lines().any(|l| l.contains(line)) {
            wrong.push(format!("no trace line contains {line:?}"));
        }
    }
    if !row.lines.is_empty() && wrong.is_empty() {
        matched.push(format!("{} required lines", row.lines.len()));
    }
    for c in row.counts {
        let seen = trace.lines().filter(|l| l.contains(c.line)).count() as u64;
        match guest_count(serial, c.key) {
            Some(n) if n == seen => matched.push(format!("{} {n}", c.key)),
            Some(n) => wrong.push(format!("{}: guest {n}, QEMU trace {seen}", c.key)),
            None => wrong.push(format!("{}: no `trace-count: {}=` line", c.key, c.key)),
        }
    }
    if wrong.is_empty() {
        Ok(Some(format!(
            "QEMU trace {} agrees with the guest's counters: {}",
            util::display_path(&path),
            matched.join(", ")
        )))
    } else {
        Err(format!("QEMU trace disagrees: {}", wrong.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_count_is_the_last_one_printed() {
        let serial = [
            "x: trace-count: map=3".to_string(),
            "trace-count: map=12 (totals)".to_string(),
        ];
        assert_eq!(guest_count(&serial, "map"), Some(12));
        assert_eq!(guest_count(&serial, "unmap"), None);
    }

    #[test]
    fn every_row_with_checks_exists() {
        for r in ROWS {
            assert!(
                crate::systests::SYSTEM_TESTS
                    .iter()
                    .any(|t| t.name == r.row),
                "{}",
                r.row
            );
            assert!(!r.counts.is_empty(), "{}: no trace events", r.row);
        }
    }
}
