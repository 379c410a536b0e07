//! QEMU trace checks: for some rows, counters the guest prints must equal
//! what the emulated IOMMU saw, counted from QEMU's own trace events. The
//! guest prints `trace-count: <key>=<n>` (totals since boot) before it
//! exits; the row runs with `-trace <event>` for each event and `-D` a trace
//! file next to its log, and passes only if every count matches and the
//! trace holds, in order, every line the row requires of it
//! ([`TraceRow::lines`]: what the emulated hardware did, e.g. the SMMU
//! translated an MSI's IOVA, then the ITS took the write).

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

/// A trace line a row requires: one line of the trace file that contains
/// every part, found after the line the previous requirement matched.
#[derive(Debug, Clone, Copy)]
pub struct TraceLine {
    /// What the line shows, for the failure message.
    pub what: &'static str,
    /// Substrings the line must contain (the event name first).
    pub parts: &'static [&'static str],
}

/// `its-msi`: edu's MSI (EventID 0 from DeviceID 8, edu's requester ID and
/// StreamID) to the MSI window's IOVA 0x800_0040, which the SMMU translates
/// to virt's GITS_TRANSLATER 0x0809_0040; the ITS maps it to LPI 8192.
const ITS_MSI: &[TraceLine] = &[
    TraceLine {
        what: "the SMMU translated the doorbell IOVA to GITS_TRANSLATER",
        parts: &[
            "smmuv3_translate_success",
            "sid=0x8 iova=0x8000040 translated=0x8090040",
        ],
    },
    TraceLine {
        what: "the ITS received the MSI write from requester 0x8",
        parts: &[
            "gicv3_its_translation_write",
            "offset 0x40 data 0x0 size 4 requester_id 0x8",
        ],
    },
    TraceLine {
        what: "the ITS looked up DeviceID 0x8",
        parts: &["gicv3_its_dte_read", "DeviceID 0x8: valid 1"],
    },
    TraceLine {
        what: "the ITS translated EventID 0 to LPI 8192",
        parts: &[
            "gicv3_its_ite_read",
            "EventID 0x0: valid 1 inttype 1 intid 0x2000",
        ],
    },
];

/// A row with trace checks.
#[derive(Debug, Clone, Copy)]
pub struct TraceRow {
    /// The row's name.
    pub row: &'static str,
    /// Guest counters that must match trace line counts.
    pub counts: &'static [TraceCount],
    /// Trace events to enable besides those of `counts`.
    pub events: &'static [&'static str],
    /// Lines the trace must hold, in this order.
    pub lines: &'static [TraceLine],
    /// Every MAP QEMU's virtio-iommu handled (`virtio_iommu_map`, traced
    /// for it) maps whole granules of this size: `virt_start`,
    /// `virt_end + 1` and `phys_start` multiples of it, and there is at
    /// least one. QEMU takes an unaligned MAP without complaint, so only
    /// the trace shows that the driver never sent one.
    pub map_granule: Option<u64>,
}

/// The QEMU event [`TraceRow::map_granule`] reads.
const MAP_EVENT: &str = "virtio_iommu_map";

/// The rows with trace checks: one virtio-blk row per backend (and
/// architecture), where every policy's probe runs; and the interrupt
/// remapping row.
const ROWS: &[TraceRow] = &[
    TraceRow {
        row: "smmuv3-edu-aarch64-blk",
        counts: SMMUV3,
        events: &[],
        lines: &[],
        map_granule: None,
    },
    TraceRow {
        row: "vtd-edu-x86_64-blk",
        counts: VTD,
        events: &[],
        lines: &[],
        map_granule: None,
    },
    TraceRow {
        row: "virtio-iommu-edu-aarch64-blk",
        counts: VIRTIO_IOMMU,
        events: &[],
        lines: &[],
        map_granule: None,
    },
    TraceRow {
        row: "virtio-iommu-edu-x86_64-blk",
        counts: VIRTIO_IOMMU,
        events: &[],
        lines: &[],
        map_granule: None,
    },
    TraceRow {
        row: "smmuv3-edu-aarch64-its-msi",
        counts: &[],
        events: &["smmuv3_*", "gicv3_its_*"],
        lines: ITS_MSI,
        map_granule: None,
    },
    TraceRow {
        row: "vtd-edu-x86_64-ir",
        counts: VTD_IR,
        // QEMU's view of the scenario: IRTE 0 remapped to vector 0x31 (49),
        // then 0x32 (50), at APIC 0 (edu's MSI names handle 0: 0xfee00010);
        // the wrong requester 00:02.0 (SID 0x10) and the freed entry (SID
        // 0x8) recorded with reasons 0x26 and 0x22.
        events: &[],
        lines: &[
            TraceLine {
                what: "remapping was turned on",
                parts: &["vtd_ir_enable enable 1"],
            },
            TraceLine {
                what: "IRTE 0 remapped edu's MSI to vector 0x31 at APIC 0",
                parts: &["vtd_ir_remap index 0 trigger 0 vector 49 deliver 0 dest 0x0 mode 0"],
            },
            TraceLine {
                what: "the remappable MSI (handle 0) became vector 0x31",
                parts: &[
                    "vtd_ir_remap_msi",
                    "(addr 0xfee00010, data 0x0) -> (addr 0xfee00000, data 0x4031)",
                ],
            },
            TraceLine {
                what: "the reprogrammed IRTE 0 gave vector 0x32",
                parts: &["vtd_ir_remap index 0 trigger 0 vector 50 deliver 0 dest 0x0 mode 0"],
            },
            TraceLine {
                what: "the remappable MSI became vector 0x32",
                parts: &[
                    "vtd_ir_remap_msi",
                    "(addr 0xfee00010, data 0x0) -> (addr 0xfee00000, data 0x4032)",
                ],
            },
            TraceLine {
                what: "a source-validation fault (0x26) for SID 0x10",
                parts: &["vtd_frr_new index 0 high 0x2600000010 low 0x0"],
            },
            TraceLine {
                what: "a not-present fault (0x22) for SID 0x8",
                parts: &["vtd_frr_new index 0 high 0x2200000008 low 0x0"],
            },
            TraceLine {
                what: "remapping was turned off",
                parts: &["vtd_ir_enable enable 0"],
            },
        ],
        map_granule: None,
    },
    // At granule=64k every MAP the device saw is 64 KiB aligned in IOVA and
    // physical address, and whole 64 KiB long: the edu scenarios (pages of
    // a granule) and the disk (virtqueue memory, bounce pages, pools).
    TraceRow {
        row: "virtio-iommu-edu-aarch64-64k-all",
        counts: &[],
        events: &[],
        lines: &[],
        map_granule: Some(0x1_0000),
    },
    TraceRow {
        row: "virtio-iommu-edu-x86_64-64k-all",
        counts: &[],
        events: &[],
        lines: &[],
        map_granule: Some(0x1_0000),
    },
    TraceRow {
        row: "virtio-iommu-edu-aarch64-64k-blk",
        counts: VIRTIO_IOMMU,
        events: &[],
        lines: &[],
        map_granule: Some(0x1_0000),
    },
    TraceRow {
        row: "virtio-iommu-edu-x86_64-64k-blk",
        counts: VIRTIO_IOMMU,
        events: &[],
        lines: &[],
        map_granule: Some(0x1_0000),
    },
    TraceRow {
        row: "virtio-iommu-edu-aarch64-16k-blk",
        counts: VIRTIO_IOMMU,
        events: &[],
        lines: &[],
        map_granule: Some(0x4000),
    },
    TraceRow {
        row: "virtio-iommu-edu-x86_64-16k-blk",
        counts: VIRTIO_IOMMU,
        events: &[],
        lines: &[],
        map_granule: Some(0x4000),
    },
];

/// The trace checks of `test` (none for most rows).
fn row(test: &SystemTest) -> Option<&'static TraceRow> {
    ROWS.iter().find(|r| r.row == test.name)
}

/// The first requirement of `lines` that `trace` lacks, in order, if any.
fn missing_line(trace: &str, lines: &[TraceLine]) -> Option<&'static str> {
    let mut rest = trace.lines();
    for req in lines {
        if !rest
            .by_ref()
            .any(|l| req.parts.iter().all(|p| l.contains(p)))
        {
            return Some(req.what);
        }
    }
    None
}

/// The number of `virtio_iommu_map` lines in `trace` if each maps whole
/// granules of `granule` bytes, else the first line that does not (or that
/// cannot be read).
fn maps_in_granules(trace: &str, granule: u64) -> Result<usize, String> {
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(&format!(" {name}=0x"))? + name.len() + 4;
        let hex = line[at..].split(|c: char| !c.is_ascii_hexdigit()).next()?;
        u64::from_str_radix(hex, 16).ok()
    };
    let mut maps = 0;
    for line in trace.lines().filter(|l| l.contains(MAP_EVENT)) {
        let fields = (
            field(line, "virt_start"),
            field(line, "virt_end"),
            field(line, "phys_start"),
        );
        let (Some(start), Some(end), Some(phys)) = fields else {
            return Err(format!("unreadable MAP line {line:?}"));
        };
        let whole = [start, end.wrapping_add(1), phys]
            .iter()
            .all(|a| a % granule == 0);
        if !whole {
            return Err(format!("MAP not in {granule:#x}-byte granules: {line:?}"));
        }
        maps += 1;
    }
    Ok(maps)
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
    let Some(row) = row(test) else {
        return Vec::new();
    };
    let mut events: Vec<&str> = row.counts.iter().map(|c| c.event).collect();
    events.extend(row.events);
    if row.map_granule.is_some() {
        events.push(MAP_EVENT);
    }
    let mut seen = Vec::new();
    events.retain(|e| {
        let first = !seen.contains(e);
        seen.push(*e);
        first
    });
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
    if row(test).is_none() || !path.exists() {
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
    if !row.lines.is_empty() {
        match missing_line(&trace, row.lines) {
            None => matched.push(format!("{} required lines in order", row.lines.len())),
            Some(what) => wrong.push(format!("no trace line (in order) showing {what}")),
        }
    }
    if let Some(g) = row.map_granule {
        match maps_in_granules(&trace, g) {
            Ok(0) => wrong.push(format!(
                "no {MAP_EVENT} line (every MAP in {g:#x} granules)"
            )),
            Ok(n) => matched.push(format!("{n} MAPs, all in {g:#x}-byte granules")),
            Err(e) => wrong.push(e),
        }
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
            "QEMU trace {} agrees with the row: {}",
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
    fn required_lines_must_appear_in_order() {
        let trace = "smmuv3_translate_success x sid=0x8 iova=0x8000040 translated=0x8090040 perm=0x3\n\
            gicv3_its_translation_write GICv3 ITS TRANSLATER write: offset 0x40 data 0x0 size 4 requester_id 0x8\n\
            gicv3_its_dte_read GICv3 ITS: Device Table read for DeviceID 0x8: valid 1 size 0x7\n\
            gicv3_its_ite_read GICv3 ITS: Interrupt Table read for ITTaddr 0x1 EventID 0x0: valid 1 inttype 1 intid 0x2000 ICID 0x0\n";
        assert_eq!(missing_line(trace, ITS_MSI), None);
        // The ITS line before the SMMU's: out of order.
        let lines: Vec<&str> = trace.lines().collect();
        let swapped = [lines[1], lines[0], lines[2], lines[3]].join("\n");
        assert_eq!(
            missing_line(&swapped, ITS_MSI),
            Some("the ITS received the MSI write from requester 0x8")
        );
        // Another IOVA is not the doorbell's.
        let other = trace.replace("iova=0x8000040", "iova=0x8000080");
        assert_eq!(
            missing_line(&other, ITS_MSI),
            Some("the SMMU translated the doorbell IOVA to GITS_TRANSLATER")
        );
        assert_eq!(
            missing_line(&trace.replace("intid 0x2000", "intid 0x2001"), ITS_MSI),
            Some("the ITS translated EventID 0 to LPI 8192")
        );
    }

    #[test]
    fn every_map_must_be_whole_granules() {
        let trace = "virtio_iommu_map domain=1 virt_start=0x4000000000 virt_end=0x400000ffff phys_start=0x1080000 flags=1\n\
            virtio_iommu_unmap domain=1 virt_start=0x4000000000 virt_end=0x400000ffff\n\
            virtio_iommu_map domain=1 virt_start=0x4100000000 virt_end=0x410003ffff phys_start=0x10a0000 flags=3\n";
        assert_eq!(maps_in_granules(trace, 0x1_0000), Ok(2));
        assert_eq!(maps_in_granules("", 0x1_0000), Ok(0));
        // A 4 KiB MAP, one at a 4 KiB IOVA, one at a 4 KiB physical address.
        let t = trace.replacen(
            "virt_end=0x400000ffff phys",
            "virt_end=0x4000000fff phys",
            1,
        );
        assert!(maps_in_granules(&t, 0x1_0000).is_err());
        let t = trace.replacen(
            "virt_start=0x4000000000 virt_end=0x400000ffff phys",
            "virt_start=0x4000001000 virt_end=0x400000ffff phys",
            1,
        );
        assert!(maps_in_granules(&t, 0x1_0000).is_err());
        let t = trace.replacen("phys_start=0x1080000", "phys_start=0x1081000", 1);
        assert!(maps_in_granules(&t, 0x1_0000).is_err());
        assert_eq!(maps_in_granules(&t, 0x1000), Ok(2), "fine at 4 KiB");
        let t = trace.replacen("virt_end=0x400000ffff phys", "phys", 1);
        assert!(maps_in_granules(&t, 0x1000).is_err(), "unreadable");
    }

    #[test]
    fn every_row_with_line_checks_traces_their_events() {
        for r in ROWS {
            let name = r.row;
            let row = crate::systests::SYSTEM_TESTS
                .iter()
                .find(|t| t.name == name)
                .unwrap_or_else(|| panic!("{name}"));
            let args = args(row);
            for e in r.events.iter().chain(r.counts.iter().map(|c| &c.event)) {
                assert!(args.iter().any(|a| a == e), "{name}: -trace {e}");
            }
            // Each line's event is one the row enables.
            for l in r.lines {
                let event = l.parts[0];
                assert!(
                    args.iter()
                        .any(|e| event.starts_with(e.trim_end_matches('*'))),
                    "{name}: {event} not traced"
                );
            }
        }
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
            assert!(
                !r.counts.is_empty() || !r.lines.is_empty() || r.map_granule.is_some(),
                "{}: checks nothing",
                r.row
            );
        }
    }
}
