//! GICv3 with an ITS on aarch64 QEMU `virt` (`-M virt,gic-version=3,its=on`):
//! just enough to turn a device's MSI write into an LPI that the CPU reads
//! from its interrupt acknowledge register.
//!
//! Bring-up ([`Its::bring_up`]): the ITS device table (`GITS_BASER0`) and
//! collection table (`GITS_BASER1`), one flat 4 KiB page each; the command
//! queue (`GITS_CBASER`); CPU 0's redistributor with an LPI configuration
//! table (`GICR_PROPBASER`, IDbits 15) and a pending table
//! (`GICR_PENDBASER`), then `GICR_CTLR.EnableLPIs`; the distributor's
//! non-secure group 1; the CPU interface (system registers, priority mask
//! 0xff, group 1 on). Tables are programmed before `GITS_CTLR.Enabled`, as
//! the ITS ignores them afterwards.
//!
//! Interrupts stay masked in `DAIF`: the CPU is not interrupted by an LPI;
//! one is found by reading `ICC_IAR1_EL1` ([`poll_lpi`]), which also
//! acknowledges it. Every wait is bounded. (Wired interrupts, taken as IRQ
//! exceptions, are [`crate::gic`]'s.)
//!
//! All tables come from the frame allocator (zeroed) and are never given
//! back: the ITS and redistributor keep using them.

use core::arch::asm;
use core::fmt;

use crate::dtb::Fdt;
use crate::frames::{FrameAllocator, Frames, FramesError};
use crate::mmio;

/// The first LPI INTID.
pub const LPI_BASE: u32 = 8192;
/// What `ICC_IAR1_EL1` reads when nothing is pending.
pub const SPURIOUS: u32 = 1023;
/// Offset of `GITS_TRANSLATER` from the ITS base (in the second 64 KiB
/// frame): the doorbell devices write their EventID to.
pub const TRANSLATER_OFFSET: u64 = 0x1_0040;
/// How long register handshakes and the command queue may take.
pub const TIMEOUT_MS: u64 = 100;

const GITS_CTLR: usize = 0x0;
const GITS_TYPER: usize = 0x8;
const GITS_CBASER: usize = 0x80;
const GITS_CWRITER: usize = 0x88;
const GITS_CREADR: usize = 0x90;
const GITS_BASER: usize = 0x100;
const CTLR_ENABLED: u32 = 1;
const CTLR_QUIESCENT: u32 = 1 << 31;
const CREADR_STALLED: u64 = 1;
const VALID: u64 = 1 << 63;
const BASER_TYPE_DEVICE: u64 = 1;
const BASER_TYPE_COLLECTION: u64 = 4;

const GICR_CTLR: usize = 0x0;
const GICR_CTLR_ENABLE_LPIS: u32 = 1;
const GICR_PROPBASER: usize = 0x70;
const GICR_PENDBASER: usize = 0x78;

/// `GICR_PROPBASER.IDbits`: INTIDs of 16 bits.
const ID_BITS: u64 = 15;
/// LPI configuration table: one byte per LPI, INTIDs 8192 .. 1 << 16.
const PROP_FRAMES: usize = ((1 << (ID_BITS + 1)) - LPI_BASE as usize) / crate::frames::FRAME_SIZE;
/// Pending table: one bit per INTID, 64 KiB aligned.
const PEND_FRAMES: usize = (1 << (ID_BITS + 1)) / 8 / crate::frames::FRAME_SIZE;
/// Configuration byte of an enabled LPI: priority 0xa0, bit 0 = enable.
const LPI_ENABLED_PRIO: u8 = 0xa0 | 1;
/// Command queue: one 4 KiB page of 32-byte commands.
const CMD_SIZE: usize = 32;
const CMDQ_BYTES: usize = crate::frames::FRAME_SIZE;
/// EventID bits each device gets in `MAPD` (an ITT of 256 entries).
const EVENT_BITS: u32 = 8;

/// Why the ITS could not be brought up or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ItsError {
    /// The device tree has no `arm,gic-v3` node with distributor and
    /// redistributor `reg`s, or no `arm,gic-v3-its` node.
    NotInDeviceTree(&'static str),
    /// A table could not be allocated.
    Frames(FramesError),
    /// A handshake did not finish in time (which, last register value).
    Timeout(&'static str, u64),
    /// The ITS stalled on a command (`GITS_CREADR`).
    Stalled(u64),
    /// A value the ITS cannot take (what, the value).
    OutOfRange(&'static str, u64),
    /// `GITS_BASER<n>` is not the table type we expect (n, register).
    UnexpectedTable(usize, u64),
}

impl fmt::Display for ItsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInDeviceTree(what) => write!(
                f,
                "gic-its: no {what} in the device tree; run QEMU with -M virt,gic-version=3,its=on"
            ),
            Self::Frames(e) => write!(f, "gic-its: {e}"),
            Self::Timeout(what, v) => write!(
                f,
                "gic-its: {what} not done within {TIMEOUT_MS} ms (register {v:#x})"
            ),
            Self::Stalled(r) => write!(f, "gic-its: command queue stalled (GITS_CREADR {r:#x})"),
            Self::OutOfRange(what, v) => write!(f, "gic-its: {what} {v:#x} out of range"),
            Self::UnexpectedTable(n, v) => {
                write!(f, "gic-its: GITS_BASER{n} {v:#x} is not the expected table")
            }
        }
    }
}

impl From<crate::gic::GicError> for ItsError {
    fn from(e: crate::gic::GicError) -> Self {
        use crate::gic::GicError;
        match e {
            GicError::NotInDeviceTree(what) => Self::NotInDeviceTree(what),
            GicError::Timeout(what, v) => Self::Timeout(what, v),
            // `bring_up`'s steps report only the two above.
            _ => Self::NotInDeviceTree("usable GICv3"),
        }
    }
}

impl From<FramesError> for ItsError {
    fn from(e: FramesError) -> Self {
        Self::Frames(e)
    }
}

/// Where the GIC's parts are, from the device tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicAddrs {
    /// Distributor (`GICD`).
    pub gicd: u64,
    /// First redistributor (CPU 0's `GICR` RD_base frame).
    pub gicr: u64,
    /// ITS control frame (`GITS`).
    pub its: u64,
}

impl GicAddrs {
    /// From the `arm,gic-v3` node (`reg`: distributor, redistributors) and
    /// its `arm,gic-v3-its` child.
    pub fn from_device_tree(fdt: &Fdt<'_>) -> Result<Self, ItsError> {
        let (gicd, gicr) = crate::gic::regs_from_device_tree(fdt)?;
        let (its, _) = fdt
            .find_compatible("arm,gic-v3-its")
            .ok()
            .flatten()
            .and_then(|n| n.reg().next())
            .ok_or(ItsError::NotInDeviceTree("arm,gic-v3-its node"))?;
        Ok(Self { gicd, gicr, its })
    }

    /// Physical address of `GITS_TRANSLATER`.
    pub fn translater(&self) -> u64 {
        self.its + TRANSLATER_OFFSET
    }
}

/// A running ITS with CPU 0's redistributor accepting LPIs.
#[derive(Debug)]
pub struct Its {
    addrs: GicAddrs,
    cmdq: Frames,
    prop: Frames,
    /// Byte offset of the next command in the queue.
    write: usize,
}

fn read32(addr: u64) -> u32 {
    // SAFETY: only called with GIC register addresses `Its::bring_up`'s
    // caller vouched for; register reads have no side effects.
    unsafe { mmio::read32(addr as usize) }
}

fn read64(addr: u64) -> u64 {
    // SAFETY: as in `read32`.
    unsafe { mmio::read64(addr as usize) }
}

/// # Safety
///
/// `addr` is a GIC register (see `Its::bring_up`) and the value does not
/// point the GIC at memory Rust uses.
unsafe fn write32(addr: u64, v: u32) {
    // SAFETY: the caller's contract.
    unsafe { mmio::write32(addr as usize, v) }
}

/// # Safety
///
/// As for [`write32`].
unsafe fn write64(addr: u64, v: u64) {
    // SAFETY: the caller's contract.
    unsafe { mmio::write64(addr as usize, v) }
}

fn wait(what: &'static str, mut done: impl FnMut() -> (bool, u64)) -> Result<(), ItsError> {
    let mut last = 0;
    crate::time::poll_until(TIMEOUT_MS, || {
        let (ok, v) = done();
        last = v;
        ok.then_some(())
    })
    .map_err(|_| ItsError::Timeout(what, last))
}

impl Its {
    /// Brings up the ITS, CPU 0's redistributor for LPIs, the distributor's
    /// group 1 and the CPU interface.
    ///
    /// # Safety
    ///
    /// `addrs` must be this machine's GICv3 (identity-mapped) with an ITS,
    /// driven by nobody else, and the CPU must have interrupts masked
    /// (`DAIF.I`): group 1 is enabled, so an interrupt would otherwise be
    /// taken.
    pub unsafe fn bring_up(addrs: GicAddrs, frames: &mut FrameAllocator) -> Result<Self, ItsError> {
        let its = addrs.its;
        let ctlr = read32(its + GITS_CTLR as u64);
        if ctlr & CTLR_ENABLED != 0 {
            // SAFETY: disabling the ITS stops it using its tables.
            unsafe { write32(its + GITS_CTLR as u64, ctlr & !CTLR_ENABLED) };
            wait("ITS quiescent", || {
                let c = read32(its + GITS_CTLR as u64);
                (c & CTLR_QUIESCENT != 0, u64::from(c))
            })?;
        }
        let device_table = frames.alloc(1)?;
        let collection_table = frames.alloc(1)?;
        for (n, table, kind) in [
            (0, &device_table, BASER_TYPE_DEVICE),
            (1, &collection_table, BASER_TYPE_COLLECTION),
        ] {
            let reg = its + (GITS_BASER + 8 * n) as u64;
            let v = read64(reg);
            if (v >> 56) & 7 != kind {
                return Err(ItsError::UnexpectedTable(n, v));
            }
            // Keep Type and Entry_Size (read-only); flat, 4 KiB pages
            // (PageSize 0), one page (Size 0), Valid.
            let keep = v & (7 << 56 | 0x1f << 48);
            // SAFETY: the table is a zeroed frame of ours that nothing else
            // uses from now on (it is never freed).
            unsafe { write64(reg, keep | VALID | table.phys()) };
        }
        let cmdq = frames.alloc(CMDQ_BYTES / crate::frames::FRAME_SIZE)?;
        // SAFETY: the queue is ours (never freed); Size 0 = one 4 KiB page.
        unsafe {
            write64(its + GITS_CBASER as u64, VALID | cmdq.phys());
            write64(its + GITS_CWRITER as u64, 0);
        }

        // CPU 0's redistributor: awake, LPI tables, LPIs on.
        let rd = addrs.gicr;
        crate::gic::wake_redistributor(rd)?;
        let prop = frames.alloc(PROP_FRAMES)?;
        let pend = frames.alloc_aligned(PEND_FRAMES, 0x1_0000)?;
        crate::arch::dma_barrier();
        // SAFETY: both tables are zeroed frames of ours, never freed; the
        // redistributor reads the first and writes the second.
        unsafe {
            write64(rd + GICR_PROPBASER as u64, prop.phys() | ID_BITS);
            write64(rd + GICR_PENDBASER as u64, pend.phys());
            let c = read32(rd + GICR_CTLR as u64);
            write32(rd + GICR_CTLR as u64, c | GICR_CTLR_ENABLE_LPIS);
        }
        if read32(rd + GICR_CTLR as u64) & GICR_CTLR_ENABLE_LPIS == 0 {
            return Err(ItsError::Timeout(
                "GICR_CTLR.EnableLPIs",
                u64::from(read32(rd + GICR_CTLR as u64)),
            ));
        }

        // Distributor: group 1 (non-secure) on; ARE stays as QEMU has it.
        crate::gic::enable_group1(addrs.gicd, false)?;
        cpu_interface_on();

        // SAFETY: every table is programmed; the ITS now reads them.
        unsafe {
            write32(
                its + GITS_CTLR as u64,
                read32(its + GITS_CTLR as u64) | CTLR_ENABLED,
            )
        };
        Ok(Self {
            addrs,
            cmdq,
            prop,
            write: 0,
        })
    }

    /// The addresses it runs at.
    pub fn addrs(&self) -> GicAddrs {
        self.addrs
    }

    /// `GITS_TYPER`.
    pub fn typer(&self) -> u64 {
        read64(self.addrs.its + GITS_TYPER as u64)
    }

    /// Queues `cmds` and waits (bounded) until the ITS has read them all.
    fn submit(&mut self, cmds: &[[u64; 4]]) -> Result<(), ItsError> {
        for c in cmds {
            let q = self.cmdq.as_mut_slice();
            for (i, w) in c.iter().enumerate() {
                let at = self.write + 8 * i;
                q[at..at + 8].copy_from_slice(&w.to_le_bytes());
            }
            self.write = (self.write + CMD_SIZE) % CMDQ_BYTES;
        }
        crate::arch::dma_barrier();
        let its = self.addrs.its;
        // SAFETY: the commands only name tables and ITTs of ours.
        unsafe { write64(its + GITS_CWRITER as u64, self.write as u64) };
        let want = self.write as u64;
        let mut stalled = None;
        wait("command queue", || {
            let r = read64(its + GITS_CREADR as u64);
            if r & CREADR_STALLED != 0 {
                stalled = Some(r);
                return (true, r);
            }
            (r & 0xf_ffe0 == want, r)
        })?;
        match stalled {
            Some(r) => Err(ItsError::Stalled(r)),
            None => Ok(()),
        }
    }

    /// Routes `event` of `device` to LPI `intid` on CPU 0: the LPI's
    /// configuration byte (enabled, priority 0xa0), then `MAPD` (a new ITT
    /// from `frames`), `MAPC` (collection 0 -> CPU 0), `MAPTI`, `INVALL`,
    /// `SYNC`. Each call gives `device` a new ITT: events mapped for it by
    /// an earlier call are gone.
    pub fn map_event(
        &mut self,
        frames: &mut FrameAllocator,
        device: u32,
        event: u32,
        intid: u32,
    ) -> Result<(), ItsError> {
        if !(LPI_BASE..1 << (ID_BITS + 1)).contains(&intid) {
            return Err(ItsError::OutOfRange("LPI INTID", u64::from(intid)));
        }
        if event >= 1 << EVENT_BITS {
            return Err(ItsError::OutOfRange("EventID", u64::from(event)));
        }
        // 256 entries of 12 bytes: one frame (256-byte aligned as needed).
        let itt = frames.alloc(1)?;
        self.prop.as_mut_slice()[(intid - LPI_BASE) as usize] = LPI_ENABLED_PRIO;
        crate::arch::dma_barrier();
        let dev = u64::from(device) << 32;
        let collection = 0u64;
        // PTA = 0: RDbase (bits 51:16) is the processor number, 0.
        let rdbase = 0u64;
        self.submit(&[
            [0x08 | dev, u64::from(EVENT_BITS - 1), VALID | itt.phys(), 0],
            [0x09, 0, VALID | rdbase | collection, 0],
            [
                0x0a | dev,
                u64::from(event) | u64::from(intid) << 32,
                collection,
                0,
            ],
            [0x0d, 0, collection, 0],
            [0x05, 0, rdbase, 0],
        ])
    }
}

/// Reads a system register by its generic name.
macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading a GIC CPU interface register; the acknowledge
        // register's side effect (activating the interrupt) is what
        // `poll_lpi` wants.
        unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nostack)) };
        v
    }};
}

macro_rules! msr {
    ($reg:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: writing a GIC CPU interface register; interrupts stay
        // masked in DAIF, so no exception follows.
        unsafe { asm!(concat!("msr ", $reg, ", {}"), "isb", in(reg) v, options(nostack)) };
    }};
}

/// System register interface on, priority mask 0xff, group 1 on.
pub(crate) fn cpu_interface_on() {
    if crate::arch::current_el() == 2 {
        // ICC_SRE_EL2: SRE | Enable (EL1 may use the system registers too).
        let v = mrs!("S3_4_C12_C9_5");
        msr!("S3_4_C12_C9_5", v | 1 | 1 << 3);
    }
    // ICC_SRE_EL1.SRE.
    let v = mrs!("S3_0_C12_C12_5");
    msr!("S3_0_C12_C12_5", v | 1);
    // ICC_PMR_EL1 = 0xff: every priority passes.
    msr!("S3_0_C4_C6_0", 0xff);
    // ICC_IGRPEN1_EL1.Enable.
    msr!("S3_0_C12_C12_7", 1);
}

/// Waits up to `ms` milliseconds for a pending group-1 interrupt, acknowledges
/// and ends it (`ICC_IAR1_EL1`, `ICC_EOIR1_EL1`), and returns its INTID;
/// `None` if none arrived.
pub fn poll_lpi(ms: u64) -> Option<u32> {
    crate::time::poll_until(ms, || {
        let id = (mrs!("S3_0_C12_C12_0") & 0xff_ffff) as u32;
        if id == SPURIOUS {
            return None;
        }
        msr!("S3_0_C12_C12_1", u64::from(id));
        Some(id)
    })
    .ok()
}
