//! GICv3 wired interrupts on aarch64 QEMU `virt` (`-M virt,gic-version=3`):
//! SPIs (PCI INTx arrive as SPIs), the EL1 physical timer's PPI, and the
//! IRQ exception that takes them. The ITS and LPIs are in
//! [`crate::gic_its`], which shares the bring-up steps here.
//!
//! [`bring_up`] wakes CPU 0's redistributor, turns on affinity routing and
//! group 1 in the distributor and the CPU interface (system registers,
//! priority mask 0xff, group 1), and configures the timer's PPI (INTID from
//! the device tree's `arm,armv8-timer` node, second entry: the non-secure
//! physical timer). [`configure_spi`] makes an SPI group 1, priority
//! [`PRIORITY`], level- or edge-sensitive (`GICD_ICFGR`), routed to this
//! CPU (`GICD_IROUTER`, affinity from `MPIDR_EL1`), and leaves it disabled;
//! [`set_enabled`] enables or disables it.
//!
//! The IRQ vector (`arch::aarch64`) calls [`platform_aarch64_irq`], which
//! acknowledges (`ICC_IAR1_EL1`), runs the INTID's handler
//! ([`crate::irq`]), disables the SPI if the handler asks, and ends the
//! interrupt (`ICC_EOIR1_EL1`, which also deactivates it: EOImode 0). A
//! level SPI whose device still drives its line is pending again at once.
//!
//! `DAIF.I` stays set except inside [`idle`], which arms `CNTP` and sleeps
//! in `wfi`; only EL1 is supported (an example that stays at EL2 does not
//! take EL1's IRQs).

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::dtb::{Fdt, read_cells};
use crate::mmio;

/// Priority of the SPIs and the timer PPI (any value passes the 0xff mask).
pub const PRIORITY: u8 = 0xa0;
/// Largest SPI INTID (1020-1023 are special).
pub const MAX_SPI: u32 = 1019;
/// How long register handshakes may take.
pub const TIMEOUT_MS: u64 = 100;

const GICD_CTLR: usize = 0x0;
const GICD_TYPER: usize = 0x4;
const GICD_IGROUPR: usize = 0x80;
const GICD_ISENABLER: usize = 0x100;
const GICD_ICENABLER: usize = 0x180;
const GICD_IPRIORITYR: usize = 0x400;
const GICD_ICFGR: usize = 0xc00;
const GICD_IROUTER: usize = 0x6000;
const GICD_CTLR_GRP1: u32 = 1 << 1;
const GICD_CTLR_ARE: u32 = 1 << 4;
const GICD_CTLR_RWP: u32 = 1 << 31;
const GICR_WAKER: usize = 0x14;
const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// The redistributor's SGI/PPI frame follows its RD frame.
const GICR_SGI_FRAME: usize = 0x1_0000;
const GICR_IGROUPR0: usize = 0x80;
const GICR_ISENABLER0: usize = 0x100;
const GICR_IPRIORITYR: usize = 0x400;
/// Device-tree GIC interrupt types (first cell of a specifier): SPI, PPI.
pub const DT_SPI: u64 = 0;
const DT_PPI: u64 = 1;

/// Why the GIC could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GicError {
    /// The device tree lacks this (e.g. no `arm,gic-v3` node: QEMU's virt
    /// defaults to a GICv2; run with `-M virt,gic-version=3`).
    NotInDeviceTree(&'static str),
    /// Interrupts are taken at EL1 only (the EL we run at).
    NotAtEl1(u8),
    /// A handshake did not finish in time (which, last register value).
    Timeout(&'static str, u64),
    /// Affinity routing is off and does not turn on (`GICD_CTLR`).
    NoAffinityRouting(u32),
    /// Not an SPI this distributor has (INTID, largest it has).
    NotAnSpi(u32, u32),
}

impl fmt::Display for GicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInDeviceTree(what) => write!(
                f,
                "gic: no {what} in the device tree; run QEMU with -M virt,gic-version=3"
            ),
            Self::NotAtEl1(el) => write!(f, "gic: interrupts are taken at EL1, we run at EL{el}"),
            Self::Timeout(what, v) => write!(
                f,
                "gic: {what} not done within {TIMEOUT_MS} ms (register {v:#x})"
            ),
            Self::NoAffinityRouting(c) => {
                write!(
                    f,
                    "gic: affinity routing does not turn on (GICD_CTLR {c:#x})"
                )
            }
            Self::NotAnSpi(id, max) => {
                write!(
                    f,
                    "gic: INTID {id} is not an SPI of this distributor (32..={max})"
                )
            }
        }
    }
}

/// The distributor and CPU 0's redistributor (`reg` of the `arm,gic-v3`
/// node).
pub fn regs_from_device_tree(fdt: &Fdt<'_>) -> Result<(u64, u64), GicError> {
    let gic = fdt
        .find_compatible("arm,gic-v3")
        .ok()
        .flatten()
        .ok_or(GicError::NotInDeviceTree("arm,gic-v3 node"))?;
    let mut reg = gic.reg();
    let (gicd, _) = reg.next().ok_or(GicError::NotInDeviceTree("GICD reg"))?;
    let (gicr, _) = reg.next().ok_or(GicError::NotInDeviceTree("GICR reg"))?;
    Ok((gicd, gicr))
}

fn read32(addr: u64) -> u32 {
    // SAFETY: only called with GIC register addresses from the device tree
    // (`bring_up`, `Its::bring_up`); register reads have no side effects.
    unsafe { mmio::read32(addr as usize) }
}

/// # Safety
///
/// `addr` is a GIC register (see [`read32`]) and the write does not make
/// the CPU take an interrupt with no handler (IRQs are taken only in
/// [`idle`], and the vector returns).
unsafe fn write32(addr: u64, v: u32) {
    // SAFETY: the caller's contract.
    unsafe { mmio::write32(addr as usize, v) }
}

fn wait(what: &'static str, mut done: impl FnMut() -> (bool, u64)) -> Result<(), GicError> {
    let mut last = 0;
    crate::time::poll_until(TIMEOUT_MS, || {
        let (ok, v) = done();
        last = v;
        ok.then_some(())
    })
    .map_err(|_| GicError::Timeout(what, last))
}

/// Wakes the redistributor at `gicr` (`GICR_WAKER.ProcessorSleep` off,
/// then waits for `ChildrenAsleep` to clear).
pub(crate) fn wake_redistributor(gicr: u64) -> Result<(), GicError> {
    let waker = gicr + GICR_WAKER as u64;
    // SAFETY: waking the redistributor has no memory effect.
    unsafe { write32(waker, read32(waker) & !WAKER_PROCESSOR_SLEEP) };
    wait("redistributor wake-up", || {
        let w = read32(waker);
        (w & WAKER_CHILDREN_ASLEEP == 0, u64::from(w))
    })
}

fn wait_rwp(gicd: u64) -> Result<(), GicError> {
    wait("GICD_CTLR write", || {
        let c = read32(gicd + GICD_CTLR as u64);
        (c & GICD_CTLR_RWP == 0, u64::from(c))
    })
}

/// Turns on group 1 (non-secure) in the distributor at `gicd`; affinity
/// routing too if `need_are` (it must be on to route SPIs by affinity;
/// QEMU's GICv3 has it on and fixed).
pub(crate) fn enable_group1(gicd: u64, need_are: bool) -> Result<(), GicError> {
    let ctlr = gicd + GICD_CTLR as u64;
    let mut want = GICD_CTLR_GRP1;
    if need_are {
        want |= GICD_CTLR_ARE;
    }
    // SAFETY: enabling a group (and affinity routing); no SPI is enabled
    // by this, and DAIF masks the CPU.
    unsafe { write32(ctlr, read32(ctlr) | want) };
    wait_rwp(gicd)?;
    let now = read32(ctlr);
    if need_are && now & GICD_CTLR_ARE == 0 {
        return Err(GicError::NoAffinityRouting(now));
    }
    Ok(())
}

/// Reads a system register by its generic name.
macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading a GIC CPU interface, timer or ID register; the
        // acknowledge register's side effect (activating the interrupt)
        // is what the IRQ entry wants.
        unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nostack)) };
        v
    }};
}

/// Writes a system register by its generic name, then `isb`.
macro_rules! msr {
    ($reg:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: writing a GIC CPU interface or timer register: ends an
        // interrupt, or arms / stops the timer, whose PPI the IRQ entry
        // handles; no memory effect.
        unsafe { asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) v, options(nostack)) };
    }};
}

/// Distributor and redistributor once [`bring_up`] ran (0 before).
static GICD: AtomicUsize = AtomicUsize::new(0);
static GICR: AtomicUsize = AtomicUsize::new(0);
/// The timer PPI's INTID (0 before [`bring_up`]).
static TIMER_INTID: AtomicU32 = AtomicU32::new(0);
/// `GICD_TYPER`'s largest SPI.
static LARGEST_SPI: AtomicU32 = AtomicU32::new(0);

/// The EL1 physical timer's INTID: `interrupts` of `arm,armv8-timer` lists
/// secure, non-secure physical, virtual and hypervisor timers as PPIs.
fn timer_intid(fdt: &Fdt<'_>) -> Result<u32, GicError> {
    let missing = GicError::NotInDeviceTree("arm,armv8-timer interrupts");
    let timer = fdt
        .find_compatible("arm,armv8-timer")
        .ok()
        .flatten()
        .ok_or(missing)?;
    let cells = timer.prop("interrupts").ok_or(missing)?;
    // Three cells per entry; the second entry.
    let (kind, rest) = cells
        .get(12..)
        .and_then(|c| read_cells(c, 1))
        .ok_or(missing)?;
    let (ppi, _) = read_cells(rest, 1).ok_or(missing)?;
    if kind != DT_PPI || ppi >= 16 {
        return Err(missing);
    }
    Ok(16 + ppi as u32)
}

/// Brings up the distributor, CPU 0's redistributor and the CPU interface
/// for wired interrupts, and the sleep timer's PPI; again is harmless.
pub fn bring_up(fdt: &Fdt<'_>) -> Result<(), GicError> {
    let el = crate::arch::current_el();
    if el != 1 {
        return Err(GicError::NotAtEl1(el));
    }
    let (gicd, gicr) = regs_from_device_tree(fdt)?;
    let timer = timer_intid(fdt)?;
    wake_redistributor(gicr)?;
    enable_group1(gicd, true)?;
    crate::gic_its::cpu_interface_on();
    let sgi = gicr + GICR_SGI_FRAME as u64;
    let bit = 1u32 << timer;
    // SAFETY: the timer PPI: group 1, priority, enabled. The timer itself
    // is off until `idle` arms it, and DAIF masks the CPU.
    unsafe {
        write32(
            sgi + GICR_IGROUPR0 as u64,
            read32(sgi + GICR_IGROUPR0 as u64) | bit,
        );
        mmio::write8(
            (sgi + GICR_IPRIORITYR as u64 + u64::from(timer)) as usize,
            PRIORITY,
        );
        write32(sgi + GICR_ISENABLER0 as u64, bit);
    }
    let lines = read32(gicd + GICD_TYPER as u64) & 0x1f;
    LARGEST_SPI.store((32 * (lines + 1) - 1).min(MAX_SPI), Ordering::Relaxed);
    TIMER_INTID.store(timer, Ordering::Relaxed);
    GICR.store(gicr as usize, Ordering::Relaxed);
    GICD.store(gicd as usize, Ordering::Release);
    Ok(())
}

fn gicd() -> Option<u64> {
    match GICD.load(Ordering::Acquire) {
        0 => None,
        d => Some(d as u64),
    }
}

/// The largest SPI INTID of the distributor ([`bring_up`] first; 0 before).
pub fn largest_spi() -> u32 {
    LARGEST_SPI.load(Ordering::Relaxed)
}

/// Makes SPI `intid` group 1, priority [`PRIORITY`], level-sensitive (or
/// edge), routed to this CPU; leaves it disabled.
pub fn configure_spi(intid: u32, level: bool) -> Result<(), GicError> {
    let d = gicd().ok_or(GicError::NotInDeviceTree("GIC brought up"))?;
    if !(32..=largest_spi()).contains(&intid) {
        return Err(GicError::NotAnSpi(intid, largest_spi()));
    }
    set_enabled(intid, false);
    let (word, bit) = (u64::from(intid / 32) * 4, 1u32 << (intid % 32));
    let cfg = d + GICD_ICFGR as u64 + u64::from(intid / 16) * 4;
    let edge_bit = 2u32 << (2 * (intid % 16));
    // Aff3 (39:32), Aff2, Aff1, Aff0 of MPIDR sit where IROUTER wants
    // them; IRM (bit 31) = 0: this CPU only.
    let affinity = mrs!("mpidr_el1") & 0xff_00ff_ffff;
    let router = d + GICD_IROUTER as u64 + u64::from(intid) * 8;
    // SAFETY: configuration registers of a disabled SPI of this
    // distributor; none delivers anything.
    unsafe {
        let g = d + GICD_IGROUPR as u64 + word;
        write32(g, read32(g) | bit);
        mmio::write8(
            (d + GICD_IPRIORITYR as u64 + u64::from(intid)) as usize,
            PRIORITY,
        );
        let c = read32(cfg);
        write32(cfg, if level { c & !edge_bit } else { c | edge_bit });
        write32(router, affinity as u32);
        write32(router + 4, (affinity >> 32) as u32);
    }
    Ok(())
}

/// Enables or disables SPI `intid` (nothing before [`bring_up`] or for
/// an INTID that is not an SPI). A level SPI disabled while its line is
/// high stays pending and is delivered once enabled again.
pub fn set_enabled(intid: u32, enabled: bool) {
    let Some(d) = gicd() else {
        return;
    };
    if !(32..=largest_spi()).contains(&intid) {
        return;
    }
    let reg = if enabled {
        GICD_ISENABLER
    } else {
        GICD_ICENABLER
    };
    // SAFETY: the set/clear-enable bit of a configured SPI (its handler or
    // none: the IRQ entry ends an interrupt without a handler too).
    unsafe {
        write32(
            d + reg as u64 + u64::from(intid / 32) * 4,
            1 << (intid % 32),
        )
    };
    if !enabled {
        // Bounded; a timeout leaves the SPI disabled a little later.
        let _ = wait_rwp(d);
    }
}

/// Called by the IRQ vector with IRQs masked: acknowledges one interrupt,
/// handles it, ends it.
#[unsafe(no_mangle)]
extern "C" fn platform_aarch64_irq() {
    // ICC_IAR1_EL1.
    let iar = mrs!("S3_0_C12_C12_0");
    let intid = (iar & 0xff_ffff) as u32;
    if (1020..1024).contains(&intid) {
        // Spurious: nothing to end.
        return;
    }
    if intid == TIMER_INTID.load(Ordering::Relaxed) {
        // Stop the timer: its output is a level, which would fire again.
        msr!("cntp_ctl_el0", 0);
    } else if let Some(spi) = crate::irq::dispatch(intid) {
        set_enabled(spi, false);
    }
    // ICC_EOIR1_EL1: priority drop and deactivation.
    msr!("S3_0_C12_C12_1", iar);
}

/// Sleeps (`wfi`) for at most `us` microseconds: arms `CNTP` to fire then,
/// waits with IRQs masked (a pending IRQ ends `wfi` even so, and one that
/// arrived before it makes it return at once: no lost wake-up), unmasks
/// IRQs for an instant to take what is pending, masks them, stops the
/// timer. Before [`bring_up`] it only spins once, so a caller's loop
/// polls.
pub fn idle(us: u64) {
    let Some((now, hz)) = crate::time::clock().filter(|_| gicd().is_some()) else {
        core::hint::spin_loop();
        return;
    };
    let ticks = ((u128::from(hz) * u128::from(us)) / 1_000_000).clamp(1, u128::from(u32::MAX));
    msr!("cntp_cval_el0", now.saturating_add(ticks as u64));
    // ENABLE, interrupt not masked.
    msr!("cntp_ctl_el0", 1);
    // SAFETY: the vector table's IRQ entry saves what it clobbers, runs
    // `platform_aarch64_irq` and returns; IRQs are unmasked only between
    // the two DAIF writes.
    unsafe {
        asm!(
            "wfi",
            "msr daifclr, #2",
            "isb",
            "msr daifset, #2",
            options(nostack)
        )
    };
    msr!("cntp_ctl_el0", 0);
}
