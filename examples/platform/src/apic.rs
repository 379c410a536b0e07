//! The local APIC (x86_64 only), in xAPIC mode (registers in MMIO at the
//! address `IA32_APIC_BASE` names) or x2APIC mode (registers as MSRs), and
//! the log the interrupt vectors 32-255 write.
//!
//! [`LocalApic::enable`] masks the legacy 8259 PIC (SeaBIOS leaves it at
//! vectors 8-15, where an ISA interrupt would look like an exception),
//! software-enables the APIC with spurious vector 0xFF, and tells the
//! interrupt stubs how to send the EOI. Each stub (see `arch::x86_64`) logs
//! its vector and sends the EOI before `iretq`; the spurious vector is
//! counted apart and gets no EOI, as the architecture requires.
//!
//! Interrupts stay masked (`RFLAGS.IF = 0`) except inside [`wait_vector`],
//! so a device's interrupt waits in the APIC's IRR until a test asks for it.

use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicUsize, Ordering};

use crate::arch;
use crate::mmio;

/// `IA32_APIC_BASE`.
pub const IA32_APIC_BASE: u32 = 0x1b;
const BASE_X2APIC: u64 = 1 << 10;
const BASE_ENABLE: u64 = 1 << 11;
const BASE_ADDRESS: u64 = 0xf_ffff_f000;
/// x2APIC ID, EOI and spurious-vector registers (MSRs).
const X2APIC_ID: u32 = 0x802;
const X2APIC_LDR: u32 = 0x80d;
const X2APIC_EOI: u32 = 0x80b;
const X2APIC_SVR: u32 = 0x80f;
/// xAPIC ID, EOI and spurious-vector registers (offsets in the MMIO page).
const XAPIC_ID: usize = 0x20;
const XAPIC_EOI: usize = 0xb0;
const XAPIC_SVR: usize = 0xf0;
const SVR_ENABLE: u32 = 1 << 8;
/// The spurious-interrupt vector [`LocalApic::enable`] programs.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// The 8259 PICs' data (mask) ports.
const PIC_MASTER_DATA: u16 = 0x21;
const PIC_SLAVE_DATA: u16 = 0xa1;
/// CPUID.01H feature bits.
const CPUID1_EDX_APIC: u32 = 1 << 9;
const CPUID1_ECX_X2APIC: u32 = 1 << 21;
/// The boot stub maps 2-4 GiB uncached: the xAPIC page must be there.
const UNCACHED: core::ops::Range<u64> = 0x8000_0000..0x1_0000_0000;

/// How the local APIC's registers are reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicMode {
    /// MMIO at the `IA32_APIC_BASE` address, 8-bit APIC IDs.
    XApic,
    /// MSRs 0x800-0x8FF, 32-bit APIC IDs (`IA32_APIC_BASE` bit 10).
    X2Apic,
}

/// Why the local APIC could not be enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApicError {
    /// CPUID.01H:EDX.APIC is clear.
    NoApic,
    /// x2APIC asked for, but CPUID.01H:ECX.x2APIC is clear (QEMU: use
    /// `-cpu max`).
    NoX2Apic,
    /// `IA32_APIC_BASE` has the global enable bit clear (its value).
    GloballyDisabled(u64),
    /// xAPIC asked for while the CPU is in x2APIC mode, which it can only
    /// leave through a disable (its `IA32_APIC_BASE`).
    InX2ApicMode(u64),
    /// The xAPIC page is not in the boot stub's uncached identity map.
    BaseNotMapped(u64),
    /// The spurious-vector register did not keep the enable bit (its value).
    NotEnabled(u32),
}

impl fmt::Display for ApicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoApic => f.write_str("local APIC: CPUID reports none"),
            Self::NoX2Apic => f.write_str(
                "local APIC: the CPU has no x2APIC mode (CPUID.01H:ECX bit 21; QEMU: -cpu max)",
            ),
            Self::GloballyDisabled(b) => {
                write!(f, "local APIC: globally disabled (IA32_APIC_BASE {b:#x})")
            }
            Self::InX2ApicMode(b) => write!(
                f,
                "local APIC: already in x2APIC mode (IA32_APIC_BASE {b:#x}), cannot go back to xAPIC"
            ),
            Self::BaseNotMapped(b) => write!(
                f,
                "local APIC: xAPIC registers at {b:#x} are outside the uncached identity map"
            ),
            Self::NotEnabled(svr) => write!(
                f,
                "local APIC: software enable did not stick (SVR {svr:#x})"
            ),
        }
    }
}

/// 0: not enabled, 1: xAPIC, 2: x2APIC; read by the interrupt handler.
static MODE: AtomicU8 = AtomicU8::new(0);
/// The xAPIC register page (valid when `MODE` is 1).
static XAPIC_BASE: AtomicUsize = AtomicUsize::new(0);

/// The local APIC of the boot CPU, software-enabled.
#[derive(Debug)]
pub struct LocalApic {
    mode: ApicMode,
    base: usize,
}

impl LocalApic {
    /// Masks the 8259 PIC, puts the APIC in `mode` and software-enables it
    /// with [`SPURIOUS_VECTOR`]. Interrupts stay masked.
    pub fn enable(mode: ApicMode) -> Result<Self, ApicError> {
        let (_, _, ecx, edx) = arch::cpuid(1);
        if edx & CPUID1_EDX_APIC == 0 {
            return Err(ApicError::NoApic);
        }
        if mode == ApicMode::X2Apic && ecx & CPUID1_ECX_X2APIC == 0 {
            return Err(ApicError::NoX2Apic);
        }
        // SAFETY: writing all-ones to the PICs' interrupt mask registers
        // masks every ISA interrupt line; it touches nothing else.
        unsafe {
            arch::outb(PIC_MASTER_DATA, 0xff);
            arch::outb(PIC_SLAVE_DATA, 0xff);
        }
        // SAFETY: CPUID says the APIC exists, so IA32_APIC_BASE does.
        let apic_base = unsafe { arch::rdmsr(IA32_APIC_BASE) };
        if apic_base & BASE_ENABLE == 0 {
            return Err(ApicError::GloballyDisabled(apic_base));
        }
        let base = match mode {
            ApicMode::XApic => {
                if apic_base & BASE_X2APIC != 0 {
                    return Err(ApicError::InX2ApicMode(apic_base));
                }
                let base = apic_base & BASE_ADDRESS;
                if !UNCACHED.contains(&base) {
                    return Err(ApicError::BaseNotMapped(base));
                }
                base as usize
            }
            ApicMode::X2Apic => {
                if apic_base & BASE_X2APIC == 0 {
                    // SAFETY: CPUID reports x2APIC and the APIC is enabled,
                    // so setting EXTD is the architectural xAPIC -> x2APIC
                    // transition; it changes how the APIC is reached, not
                    // any memory.
                    unsafe { arch::wrmsr(IA32_APIC_BASE, apic_base | BASE_X2APIC) };
                }
                0
            }
        };
        let apic = Self { mode, base };
        let svr = apic.read(XAPIC_SVR, X2APIC_SVR);
        apic.write(
            XAPIC_SVR,
            X2APIC_SVR,
            (svr & !0xff) | SVR_ENABLE | u32::from(SPURIOUS_VECTOR),
        );
        let svr = apic.read(XAPIC_SVR, X2APIC_SVR);
        if svr & SVR_ENABLE == 0 {
            return Err(ApicError::NotEnabled(svr));
        }
        XAPIC_BASE.store(base, Ordering::Relaxed);
        let code = match mode {
            ApicMode::XApic => 1,
            ApicMode::X2Apic => 2,
        };
        MODE.store(code, Ordering::Release);
        Ok(apic)
    }

    /// The mode the APIC runs in.
    pub fn mode(&self) -> ApicMode {
        self.mode
    }

    /// This CPU's APIC ID: 8 bits (xAPIC ID register bits 31:24) or 32
    /// bits (the x2APIC ID MSR).
    pub fn id(&self) -> u32 {
        match self.mode {
            ApicMode::XApic => self.read(XAPIC_ID, X2APIC_ID) >> 24,
            ApicMode::X2Apic => self.read(XAPIC_ID, X2APIC_ID),
        }
    }

    /// In x2APIC mode, the logical destination register (MSR 0x80D: the
    /// cluster in bits 31:16, one bit of 15:0 for this CPU); `None` in
    /// xAPIC mode (whose LDR software sets up).
    pub fn x2apic_logical_id(&self) -> Option<u32> {
        match self.mode {
            ApicMode::XApic => None,
            // SAFETY: x2APIC mode is on, so the LDR MSR exists; reading it
            // has no side effect.
            ApicMode::X2Apic => Some(unsafe { arch::rdmsr(X2APIC_LDR) as u32 }),
        }
    }

    fn read(&self, offset: usize, msr: u32) -> u32 {
        match self.mode {
            // SAFETY: `offset` is an APIC register of the page `enable`
            // checked is identity mapped uncached; reading the ID or SVR has
            // no side effect.
            ApicMode::XApic => unsafe { mmio::read32(self.base + offset) },
            // SAFETY: x2APIC mode is on (enable set it), so the x2APIC MSRs
            // exist; reading the ID or SVR has no side effect.
            ApicMode::X2Apic => unsafe { arch::rdmsr(msr) as u32 },
        }
    }

    fn write(&self, offset: usize, msr: u32, value: u32) {
        match self.mode {
            // SAFETY: as in `read`; only the SVR is written, which enables
            // the APIC and names the spurious vector (its gate returns).
            ApicMode::XApic => unsafe { mmio::write32(self.base + offset, value) },
            // SAFETY: as in `read`, for the SVR MSR.
            ApicMode::X2Apic => unsafe { arch::wrmsr(msr, u64::from(value)) },
        }
    }
}

/// Signals end of interrupt to the local APIC, in whichever mode
/// [`LocalApic::enable`] put it (nothing before that).
fn eoi() {
    match MODE.load(Ordering::Acquire) {
        // SAFETY: mode 1 was stored after `enable` checked the xAPIC page is
        // identity mapped uncached; writing 0 to EOI retires the in-service
        // interrupt and has no other effect.
        1 => unsafe { mmio::write32(XAPIC_BASE.load(Ordering::Relaxed) + XAPIC_EOI, 0) },
        // SAFETY: mode 2 means x2APIC mode is on; writing 0 to the EOI MSR
        // (non-zero would #GP) retires the in-service interrupt.
        2 => unsafe { arch::wrmsr(X2APIC_EOI, 0) },
        _ => {}
    }
}

/// How many vectors the log keeps.
pub const LOG_LEN: usize = 16;

/// Interrupts received (vectors 32-254), ever.
static RECEIVED: AtomicU32 = AtomicU32::new(0);
/// The last [`LOG_LEN`] vectors: vector number `n` (0-based) at `n % LOG_LEN`.
static LAST: [AtomicU8; LOG_LEN] = [const { AtomicU8::new(0) }; LOG_LEN];
/// Spurious interrupts (vector 0xFF), ever.
static SPURIOUS: AtomicU32 = AtomicU32::new(0);

/// Called by the interrupt stubs, with interrupts masked. Only it writes
/// the log (one CPU, handlers do not nest), so plain loads and stores do.
pub(crate) fn handle_interrupt(vector: u8) {
    if vector == SPURIOUS_VECTOR {
        SPURIOUS.store(SPURIOUS.load(Ordering::Relaxed) + 1, Ordering::Release);
        return;
    }
    let n = RECEIVED.load(Ordering::Relaxed);
    LAST[n as usize % LOG_LEN].store(vector, Ordering::Relaxed);
    RECEIVED.store(n.wrapping_add(1), Ordering::Release);
    eoi();
}

/// What the interrupt log holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqLog {
    /// Interrupts received since boot (vectors 32-254).
    pub received: u32,
    /// Spurious interrupts since boot.
    pub spurious: u32,
    last: [u8; LOG_LEN],
}

impl IrqLog {
    /// The log now.
    pub fn now() -> Self {
        let received = RECEIVED.load(Ordering::Acquire);
        Self {
            received,
            spurious: SPURIOUS.load(Ordering::Acquire),
            last: core::array::from_fn(|i| LAST[i].load(Ordering::Relaxed)),
        }
    }

    /// The vectors received after `earlier` was taken, oldest first (at
    /// most the last [`LOG_LEN`]).
    pub fn since(&self, earlier: &IrqLog) -> impl Iterator<Item = u8> + '_ {
        let new = self.received.wrapping_sub(earlier.received);
        let kept = new.min(LOG_LEN as u32);
        let first = self.received.wrapping_sub(kept);
        (0..kept).map(move |i| self.last[first.wrapping_add(i) as usize % LOG_LEN])
    }
}

/// Enables interrupts for up to `ms` milliseconds, or until one arrives
/// (vectors 32-254; pending ones arrive at once), then masks them again.
/// Returns the first vector received in that time, `None` if none came.
pub fn wait_vector(ms: u64) -> Option<u8> {
    let before = RECEIVED.load(Ordering::Acquire);
    // SAFETY: every gate 32-255 leads to a stub that logs, sends the EOI and
    // returns; the PIC is masked (if `enable` ran) so nothing arrives on the
    // exception vectors, and a device programmed with one would only make
    // the exception handler report it and exit. The code run here (the
    // clock) holds nothing the handler uses.
    unsafe { arch::enable_interrupts() };
    let got = crate::time::poll_until(ms, || {
        (RECEIVED.load(Ordering::Acquire) != before)
            .then(|| LAST[before as usize % LOG_LEN].load(Ordering::Relaxed))
    });
    arch::disable_interrupts();
    got.ok()
}
