//! `-append ir` / `-append ir-x2apic`: VT-d interrupt remapping of edu's
//! MSIs, delivered to this CPU's local APIC and taken as real interrupts.
//!
//! The unit is probed as for the DMA checks but DMA translation stays off
//! (QEMU remaps interrupts regardless of GSTS.TES). The local APIC runs in
//! xAPIC mode (`ir`) or x2APIC mode (`ir-x2apic`, with IRTA.EIME: the unit
//! needs `eim=on` and the CPU x2APIC, `-cpu max`). Interrupts stay masked
//! except while a step waits for one ([`platform::apic::wait_vector`]); a
//! step counts every vector received from its raise until 200 ms of quiet.
//!
//! 1. IR off: a compatibility-format MSI from edu arrives (the APIC, IDT and
//!    edu's MSI work without the unit's help);
//! 2. IR on: GSTS shows IRES and IRTPS set, CFIS clear; one global IEC;
//! 3. an entry naming our APIC ID and [`V1`], source validation = edu's
//!    requester ID: edu's remappable MSI arrives as `V1`, once;
//! 4. the entry reprogrammed to [`V2`] (one index-selective IEC): the next
//!    MSI arrives as `V2`;
//!    A destination above 0xFF: refused without x2APIC mode (nothing
//!    written); in x2APIC mode APIC ID 0x100 reaches nobody (truncated to
//!    8 bits it would be ours) and our logical x2APIC ID (LDR) gets it;
//! 5. the second edu sending the same handle: no interrupt, fault 0x26
//!    (source validation) with its SID and the index;
//! 6. a compatibility-format MSI with CFIS clear: reported as QEMU handles
//!    it (QEMU 10.0 delivers it and never raises fault 0x25; the library's
//!    host tests check it leaves GCMD.CFI clear);
//! 7. the entry freed (one index-selective IEC): the next MSI faults with
//!    reason 0x22 (not present) and the index, and raises nothing;
//! 8. dropping the remapping turns IRES off.
//!
//! The last lines are `trace-count:` totals for the row's QEMU trace check
//! (xtask/src/trace.rs): IEC descriptors queued, interrupts remapped through
//! the table, fault records read.

use iommu_intel_vtd::acpi;
use iommu_intel_vtd::regs::{G_CFI, G_IRE, G_SIRTP};
use iommu_intel_vtd::{
    Bdf, CounterSnapshot, DestinationMode, Dmar, FaultReason, FaultRecord, IrConfig, IrtIndex,
    Irte, IrteError, MsiMessage, SourceValidation, VtdError,
};
use platform::apic::{self, ApicMode, IrqLog, LocalApic};
use platform::edu::{self, Edu};
use platform::frames::FrameAllocator;
use platform::pci::{self, CMD_BUS_MASTER, CMD_MEMORY, Ecam};
use platform::setup::SetupError;
use platform::{BootInfo, demo, println};

use super::{Error, IdentityMapped, NAME, TablePool, Unit, bridge_buses, open_unit, rsdp, vtd_bdf};

/// Vector of the compatibility-format MSI before remapping is on.
pub const V_BEFORE: u8 = 0x40;
/// The entry's first vector.
pub const V1: u8 = 0x31;
/// The entry's vector after reprogramming.
pub const V2: u8 = 0x32;
/// Vector of the compatibility-format MSI with remapping on.
pub const V_COMPAT: u8 = 0x41;
/// An APIC ID that needs more than 8 bits (and names no CPU here).
const WIDE_APIC_ID: u32 = 0x100;
/// How long a step waits for the first interrupt, and for more after it.
const QUIET_MS: u64 = 200;
/// Most interrupts a step records (a storm ends the step, and fails it).
const MAX_PER_STEP: usize = 8;

/// Which scenario the command line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `ir`: xAPIC, 8-bit destinations.
    XApic,
    /// `ir-x2apic`: x2APIC, IRTA.EIME, 32-bit destinations.
    X2Apic,
}

/// `ir` or `ir-x2apic` on the command line.
pub fn scenario(boot: &BootInfo) -> Option<Scenario> {
    platform::cmdline::command_line(boot)
        .split_whitespace()
        .find_map(|w| match w {
            "ir" => Some(Scenario::XApic),
            "ir-x2apic" => Some(Scenario::X2Apic),
            _ => None,
        })
}

/// Raises edu's interrupt once and collects every vector that arrives
/// until [`QUIET_MS`] pass without one.
fn raise(edu: &mut Edu) -> heapless::Vec<u8, MAX_PER_STEP> {
    let before = IrqLog::now();
    edu.raise_irq(1);
    for _ in 0..MAX_PER_STEP {
        if apic::wait_vector(QUIET_MS).is_none() {
            break;
        }
    }
    edu.ack_irq(1);
    IrqLog::now().since(&before).collect()
}

/// Points `bdf`'s MSI at `msg`.
fn program_msi(ecam: &Ecam, bdf: pci::Bdf, msg: MsiMessage) -> Result<(), Error> {
    let data = u16::try_from(msg.data).map_err(|_| Error::Check("MSI data above 16 bits", 0))?;
    // SAFETY: `bdf` is an edu function only this scenario drives; the
    // address is in the interrupt range 0xFEEx_xxxx, which the unit
    // intercepts (remapped, faulted or passed to the APIC), never RAM.
    unsafe { edu::enable_msi(ecam, bdf, msg.address, data)? };
    Ok(())
}

/// The unit's counters across `f`.
fn counted<T>(
    unit: &Unit<'_>,
    f: impl FnOnce() -> Result<T, VtdError>,
) -> Result<(T, CounterSnapshot), Error> {
    let before = unit.counters().snapshot();
    let value = f()?;
    Ok((value, unit.counters().snapshot().since(&before)))
}

/// One index-selective IEC and its wait: what every entry change costs.
fn one_iec(what: &'static str, c: &CounterSnapshot) -> Result<(), Error> {
    if c.iec != 1 || c.iec_global != 0 || c.waits != 1 {
        return Err(Error::Check(what, c.iec));
    }
    Ok(())
}

/// Exactly one interrupt-request fault record: `reason`, from `source`,
/// naming `index`.
fn one_ir_fault(
    unit: &Unit<'_>,
    reason: FaultReason,
    source: Bdf,
    index: IrtIndex,
) -> Result<FaultRecord, Error> {
    let r = super::one_fault(unit)?;
    if r.reason != reason {
        return Err(Error::Check(
            "interrupt fault with the wrong reason",
            u64::from(r.reason.code()),
        ));
    }
    if r.source != source {
        return Err(Error::Check(
            "interrupt fault from the wrong source",
            u64::from(r.source.source_id()),
        ));
    }
    if r.interrupt_index() != Some(index.get()) {
        return Err(Error::Check(
            "interrupt fault naming the wrong index",
            r.interrupt_index().map_or(u64::MAX, u64::from),
        ));
    }
    Ok(r)
}

fn no_faults(unit: &Unit<'_>, when: &'static str) -> Result<(), Error> {
    let s = unit.drain_faults(|r| println!("{NAME}: unexpected fault: {r}"))?;
    if s.records != 0 || s.overflow {
        return Err(Error::Check(when, s.records as u64));
    }
    Ok(())
}

fn vectors(v: &[u8]) -> impl core::fmt::Display + '_ {
    struct List<'a>(&'a [u8]);
    impl core::fmt::Display for List<'_> {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("[")?;
            for (i, v) in self.0.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{v:#x}")?;
            }
            f.write_str("]")
        }
    }
    List(v)
}

/// Runs the scenario.
pub fn run(boot: &BootInfo, scenario: Scenario) -> Result<(), Error> {
    let (mode, x2apic, mode_name) = match scenario {
        Scenario::XApic => (ApicMode::XApic, false, "xAPIC"),
        Scenario::X2Apic => (ApicMode::X2Apic, true, "x2APIC"),
    };
    let lapic = LocalApic::enable(mode)?;
    let apic_id = lapic.id();
    println!(
        "{NAME}: ir: local APIC in {mode_name} mode, APIC ID {apic_id}; 8259 PIC masked, spurious vector {:#x}",
        apic::SPURIOUS_VECTOR
    );

    let rsdp = rsdp(boot).ok_or(Error::NoStartInfo)?;
    let dmar = Dmar::parse(acpi::find_table(&IdentityMapped, rsdp, *b"DMAR")?)?;
    let mut edu = platform::setup::open_edu(boot, NAME)?;
    let host = pci::discover(boot)?;
    let mut edus = host
        .functions()
        .filter(|f| (f.vendor, f.device) == (edu::VENDOR_ID, edu::DEVICE_ID));
    let edu_pci = edus.next().ok_or(SetupError::NoEdu)?.bdf;
    let other_pci = edus
        .next()
        .ok_or(Error::Check("ir needs a second edu (-device edu)", 0))?
        .bdf;
    let (edu_bdf, other_bdf) = (vtd_bdf(edu_pci), vtd_bdf(other_pci));
    let bar = host.bar(other_pci, 0)?;
    // SAFETY: the second edu's BAR0 as SeaBIOS assigned it; it never DMAs
    // here, and its MSI goes only where `program_msi` points it.
    unsafe { host.enable(other_pci, CMD_MEMORY | CMD_BUS_MASTER)? };
    // SAFETY: BAR0 of an edu function, decoding, used by nobody else.
    let mut other = unsafe { Edu::new(bar.cpu_addr as usize) };
    other.check()?;
    let ecam = host.ecam();

    let drhd = dmar
        .unit_for(0, edu_bdf, |b| bridge_buses(&host, b))
        .ok_or(Error::NoUnit(edu_bdf))?;
    let mut frames = FrameAllocator::take().ok_or(Error::Check("frame pool taken", 0))?;
    let pool = TablePool::new(&mut frames)?;
    // Legacy mode: interrupt remapping does not depend on the translation
    // mode, and DMA translation stays off.
    let unit = open_unit(&dmar, &drhd, &pool, false)?;
    let gsts = || unit.global_status();
    let ecap = unit.features().ecap;
    println!(
        "{NAME}: ir: unit at {:#x} covers {edu_bdf} and {other_bdf}: ECAP.IR {}, ECAP.EIM {}, CAP.NFR+1 = {} fault record(s); DMA translation stays off",
        drhd.register_base,
        ecap.interrupt_remapping(),
        ecap.eim(),
        unit.features().cap.fault_records()
    );

    // 1. Before remapping: a compatibility-format MSI, straight to the APIC.
    let compat = |vector: u8| -> Result<MsiMessage, Error> {
        let id = u8::try_from(apic_id)
            .map_err(|_| Error::Check("APIC ID too wide for compatibility format", 0))?;
        Ok(MsiMessage {
            address: 0xfee0_0000 | u64::from(id) << 12,
            data: u32::from(vector),
        })
    };
    let before_ir = compat(V_BEFORE)?;
    program_msi(ecam, edu_pci, before_ir)?;
    let got = raise(&mut edu);
    if got != [V_BEFORE] {
        return Err(Error::Check(
            "IR off: the compatibility-format MSI did not arrive exactly once",
            got.len() as u64,
        ));
    }
    println!(
        "{NAME}: ir: IR off: compatibility-format MSI (address {:#x}, data {:#x}) from {edu_bdf}: received {}",
        before_ir.address,
        before_ir.data,
        vectors(&got)
    );

    // 2. Remapping on.
    let (ir, cost) = counted(&unit, || {
        unit.enable_interrupt_remapping(IrConfig {
            x2apic,
            ..IrConfig::default()
        })
    })?;
    let status = gsts()?;
    if status & (G_IRE | G_SIRTP) != G_IRE | G_SIRTP || status & G_CFI != 0 {
        return Err(Error::Check(
            "GSTS after enabling: not IRES + IRTPS without CFIS",
            u64::from(status),
        ));
    }
    if cost.iec != 1 || cost.iec_global != 1 {
        return Err(Error::Check(
            "enabling remapping: not one global IEC",
            cost.iec,
        ));
    }
    println!(
        "{NAME}: ir: remapping on: {}-entry table at {:#x}, EIME {}; GSTS {status:#x}: IRES 1, IRTPS 1, CFIS 0; {} global IEC + {} wait",
        ir.entries(),
        ir.table(),
        u8::from(ir.x2apic()),
        cost.iec_global,
        cost.waits
    );

    // 3. An entry for edu: our APIC, V1, edu's requester ID only.
    let index = ir.alloc()?;
    let source = SourceValidation::Requester {
        rid: edu_bdf.source_id(),
        ignore_function_bits: 0,
    };
    let mut entry = Irte::fixed(apic_id, V1, source);
    let ((), cost) = counted(&unit, || ir.program(index, &entry))?;
    one_iec("programming the entry: not one index-selective IEC", &cost)?;
    // Interrupts delivered through the table (for the trace check).
    let mut remapped = 0;
    let msi = ir.msi(index);
    if msi.address >> 20 != 0xfee || msi.address & 1 << 4 == 0 {
        return Err(Error::Check("not a remappable-format MSI", msi.address));
    }
    program_msi(ecam, edu_pci, msi)?;
    let got = raise(&mut edu);
    no_faults(&unit, "faults while delivering the remapped MSI")?;
    if got != [V1] {
        return Err(Error::Check(
            "remapped MSI: not exactly V1 once",
            got.first().map_or(0, |&v| u64::from(v)),
        ));
    }
    remapped += 1;
    println!(
        "{NAME}: ir: IRTE {} = APIC ID {apic_id}, vector {V1:#x}, SID {edu_bdf} ({:#06x}) only ({} index-selective IEC + {} wait); edu's MSI address {:#x} (bit 4 = remappable, handle {}), data {:#x}: received {}",
        index.get(),
        edu_bdf.source_id(),
        cost.iec,
        cost.waits,
        msi.address,
        index.get(),
        msi.data,
        vectors(&got)
    );
    demo!(
        "remapped",
        "edu's remappable MSI (handle {}) arrived as vector {V1:#x} at APIC {apic_id}",
        index.get()
    );

    // 4. Reprogrammed: the unit must not use the old entry.
    entry.vector = V2;
    let ((), cost) = counted(&unit, || ir.program(index, &entry))?;
    one_iec(
        "reprogramming the entry: not one index-selective IEC",
        &cost,
    )?;
    let got = raise(&mut edu);
    no_faults(&unit, "faults after reprogramming")?;
    if got != [V2] {
        return Err(Error::Check(
            "reprogrammed entry: not exactly V2 once",
            got.first().map_or(0, |&v| u64::from(v)),
        ));
    }
    remapped += 1;
    println!(
        "{NAME}: ir: IRTE {} reprogrammed to vector {V2:#x} ({} index-selective IEC + {} wait): the same MSI now received {}",
        index.get(),
        cost.iec,
        cost.waits,
        vectors(&got)
    );

    // 4b. Destinations wider than 8 bits: refused without x2APIC mode;
    //     with it, a 32-bit one is kept whole (ID 0x100 names no CPU here,
    //     truncated it would be ours) and a logical one (our x2APIC LDR)
    //     arrives.
    let wide = Irte {
        destination: WIDE_APIC_ID,
        ..entry
    };
    if x2apic {
        let ((), cost) = counted(&unit, || ir.program(index, &wide))?;
        one_iec("programming the wide destination: not one IEC", &cost)?;
        let got = raise(&mut edu);
        no_faults(&unit, "faults with a wide destination")?;
        if !got.is_empty() {
            return Err(Error::Check(
                "an MSI for APIC ID 0x100 reached this CPU",
                u64::from(got[0]),
            ));
        }
        let ldr = lapic
            .x2apic_logical_id()
            .ok_or(Error::Check("no x2APIC LDR", 0))?;
        let logical = Irte {
            destination: ldr,
            destination_mode: DestinationMode::Logical,
            ..entry
        };
        counted(&unit, || ir.program(index, &logical))?;
        let got_logical = raise(&mut edu);
        no_faults(&unit, "faults with a logical destination")?;
        if got_logical != [V2] {
            return Err(Error::Check(
                "logical x2APIC destination: not exactly V2 once",
                got_logical.len() as u64,
            ));
        }
        remapped += 1;
        println!(
            "{NAME}: ir: IRTE {} -> x2APIC ID {WIDE_APIC_ID:#x} (no such CPU; its low 8 bits are ours): received {}, no fault; -> logical destination {ldr:#x} (our x2APIC LDR): received {}",
            index.get(),
            vectors(&got),
            vectors(&got_logical)
        );
        counted(&unit, || ir.program(index, &entry))?;
    } else {
        let was = ir.read_entry(index)?;
        let (refused, cost) = counted(&unit, || Ok(ir.program(index, &wide)))?;
        match refused {
            Err(VtdError::BadIrte(IrteError::DestinationOutOfRange(d)))
                if d == WIDE_APIC_ID && ir.read_entry(index)? == was && cost.iec == 0 =>
            {
                println!(
                    "{NAME}: ir: IRTE {} -> APIC ID {WIDE_APIC_ID:#x} without x2APIC mode: refused ({}), entry unchanged, 0 IEC",
                    index.get(),
                    VtdError::BadIrte(IrteError::DestinationOutOfRange(d))
                )
            }
            _ => {
                return Err(Error::Check(
                    "APIC ID 0x100 in xAPIC mode: not refused with nothing written",
                    cost.iec,
                ));
            }
        }
    }

    // 5. The other edu with edu's handle: source validation refuses it.
    program_msi(ecam, other_pci, msi)?;
    let got = raise(&mut other);
    if !got.is_empty() {
        return Err(Error::Check(
            "an MSI from the wrong requester was delivered",
            u64::from(got[0]),
        ));
    }
    let f = one_ir_fault(&unit, FaultReason::InterruptSourceInvalid, other_bdf, index)?;
    println!(
        "{NAME}: ir: {other_bdf} ({:#06x}) sending IRTE {}'s handle: received [], {f}",
        other_bdf.source_id(),
        index.get()
    );
    demo!("fault", "{f}");

    // 6. Compatibility format with CFIS clear: whatever QEMU does.
    let late = compat(V_COMPAT)?;
    program_msi(ecam, edu_pci, late)?;
    let status = gsts()?;
    if status & G_CFI != 0 {
        return Err(Error::Check("GSTS.CFIS set", u64::from(status)));
    }
    let got = raise(&mut edu);
    let mut blocked = None;
    let s = unit.drain_faults(|r| {
        blocked.get_or_insert(r);
    })?;
    match (&got[..], blocked) {
        ([v], None) if *v == V_COMPAT && s.records == 0 => println!(
            "{NAME}: ir: compatibility-format MSI (address {:#x}, data {:#x}) with GSTS {status:#x} (IRES 1, CFIS 0): QEMU delivered it, received {}, no fault record (QEMU 10.0 does not block compatibility format; fault 0x25 is never raised)",
            late.address,
            late.data,
            vectors(&got)
        ),
        ([], Some(r)) if r.reason == FaultReason::CompatibilityFormatBlocked && s.records == 1 => {
            println!(
                "{NAME}: ir: compatibility-format MSI (address {:#x}, data {:#x}) with GSTS {status:#x} (IRES 1, CFIS 0): blocked, received [], {r}",
                late.address, late.data
            )
        }
        _ => {
            return Err(Error::Check(
                "compatibility-format MSI: neither delivered once nor blocked with reason 0x25",
                s.records as u64,
            ));
        }
    }

    // 7. The entry freed: the handle edu still sends names nothing.
    let ((), cost) = counted(&unit, || ir.free(index))?;
    one_iec("freeing the entry: not one index-selective IEC", &cost)?;
    program_msi(ecam, edu_pci, msi)?;
    let got = raise(&mut edu);
    if !got.is_empty() {
        return Err(Error::Check(
            "an MSI naming a freed entry was delivered",
            u64::from(got[0]),
        ));
    }
    let f = one_ir_fault(&unit, FaultReason::IrteNotPresent, edu_bdf, index)?;
    println!(
        "{NAME}: ir: IRTE {} freed ({} index-selective IEC + {} wait): edu's MSI with its handle: received [], {f}",
        index.get(),
        cost.iec,
        cost.waits
    );

    // 8. Off again.
    let (_, cost) = counted(&unit, || {
        drop(ir);
        Ok(())
    })?;
    let status = gsts()?;
    if status & G_IRE != 0 {
        return Err(Error::Check(
            "GSTS.IRES still set after the drop",
            u64::from(status),
        ));
    }
    no_faults(&unit, "faults at the end")?;
    let c = unit.counters().snapshot();
    let log = IrqLog::now();
    println!(
        "{NAME}: ir: remapping off after the drop ({} global IEC): GSTS {status:#x}; in all {} IEC ({} global), {} interrupts received, {} spurious",
        cost.iec_global, c.iec, c.iec_global, log.received, log.spurious
    );
    if log.spurious != 0 {
        return Err(Error::Check("spurious interrupts", u64::from(log.spurious)));
    }
    println!("trace-count: iec={}", c.iec);
    println!("trace-count: ir_remapped={remapped}");
    println!("trace-count: ir_faults={}", c.faults);
    println!("{NAME}: scenario `ir` ({mode_name}) passed");
    demo!("result", "OK");
    Ok(())
}
