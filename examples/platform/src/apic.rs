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
//! Interrupts stay masked (`RFLAGS.IF = 0`) except inside [`wait_vector`]
//! and [`idle`] (which [`crate::irq`]'s waits call), so a device's
//! interrupt waits in the APIC's IRR until a test asks for it. A vector
//! with a handler registered through [`crate::irq`] runs it before the EOI;
//! [`idle`] sleeps with the APIC timer armed ([`TIMER_VECTOR`], one-shot).

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
/// The vector of the local APIC timer that bounds [`idle`]'s sleep.
pub const TIMER_VECTOR: u8 = 0xfe;
/// Timer registers: LVT timer, initial count, current count, divide
/// configuration (xAPIC offsets, x2APIC MSRs).
const XAPIC_LVT_TIMER: usize = 0x320;
const X2APIC_LVT_TIMER: u32 = 0x832;
const XAPIC_TIMER_INITIAL: usize = 0x380;
const X2APIC_TIMER_INITIAL: u32 = 0x838;
const XAPIC_TIMER_CURRENT: usize = 0x390;
const X2APIC_TIMER_CURRENT: u32 = 0x839;
const XAPIC_TIMER_DIVIDE: usize = 0x3e0;
const X2APIC_TIMER_DIVIDE: u32 = 0x83e;
/// Divide configuration 0b0011: the timer counts at the bus clock / 16.
const TIMER_DIVIDE_16: u32 = 0b0011;
/// LVT mask bit; timer mode bits 18:17 = 0 is one-shot.
const LVT_MASKED: u32 = 1 << 16;
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

/// Enables the local APIC in the mode the CPU is in now (x2APIC if
/// `IA32_APIC_BASE` says so, else xAPIC): what code that only needs
/// interrupts delivered, and leaves the mode to the program, calls.
pub fn enable_current_mode() -> Result<LocalApic, ApicError> {
    let (_, _, _, edx) = arch::cpuid(1);
    if edx & CPUID1_EDX_APIC == 0 {
        return Err(ApicError::NoApic);
    }
    // SAFETY: CPUID says the APIC exists, so IA32_APIC_BASE does; reading
    // it has no side effect.
    let base = unsafe { arch::rdmsr(IA32_APIC_BASE) };
    let mode = if base & BASE_X2APIC != 0 {
        ApicMode::X2Apic
    } else {
        ApicMode::XApic
    };
    LocalApic::enable(mode)
}

/// Reads a timer register of the enabled APIC; `None` before
/// [`LocalApic::enable`].
fn timer_read(offset: usize, msr: u32) -> Option<u32> {
    match MODE.load(Ordering::Acquire) {
        // SAFETY: mode 1 was stored after `enable` checked the xAPIC page is
        // identity mapped uncached; the timer registers only are read,
        // without side effect.
        1 => Some(unsafe { mmio::read32(XAPIC_BASE.load(Ordering::Relaxed) + offset) }),
        // SAFETY: mode 2 means x2APIC mode is on, so the timer MSRs exist.
        2 => Some(unsafe { arch::rdmsr(msr) as u32 }),
        _ => None,
    }
}

/// Writes a timer register of the enabled APIC (nothing before enable).
fn timer_write(offset: usize, msr: u32, value: u32) {
    match MODE.load(Ordering::Acquire) {
        // SAFETY: as in `timer_read`; the timer registers only start, stop
        // or configure the timer, whose vector's gate returns.
        1 => unsafe { mmio::write32(XAPIC_BASE.load(Ordering::Relaxed) + offset, value) },
        // SAFETY: as in `timer_read`.
        2 => unsafe { arch::wrmsr(msr, u64::from(value)) },
        _ => {}
    }
}

/// Timer ticks per millisecond at divide-by-16, measured on first use:
/// 0 = not yet, `u32::MAX` = the measurement failed (no clock, no APIC,
/// or the timer did not count).
static TICKS_PER_MS: AtomicU32 = AtomicU32::new(0);

/// The timer's rate, measuring it against [`crate::time`]'s clock (for
/// 1 ms, the timer masked) the first time; `None` if it cannot be used.
fn timer_ticks_per_ms() -> Option<u32> {
    match TICKS_PER_MS.load(Ordering::Relaxed) {
        0 => {}
        u32::MAX => return None,
        t => return Some(t),
    }
    crate::time::clock()?;
    timer_read(XAPIC_TIMER_CURRENT, X2APIC_TIMER_CURRENT)?;
    timer_write(
        XAPIC_LVT_TIMER,
        X2APIC_LVT_TIMER,
        LVT_MASKED | u32::from(TIMER_VECTOR),
    );
    timer_write(XAPIC_TIMER_DIVIDE, X2APIC_TIMER_DIVIDE, TIMER_DIVIDE_16);
    timer_write(XAPIC_TIMER_INITIAL, X2APIC_TIMER_INITIAL, u32::MAX);
    let mut deadline = crate::time::Deadline::after_ms(1);
    while !deadline.expired() {
        core::hint::spin_loop();
    }
    let left = timer_read(XAPIC_TIMER_CURRENT, X2APIC_TIMER_CURRENT).unwrap_or(u32::MAX);
    timer_write(XAPIC_TIMER_INITIAL, X2APIC_TIMER_INITIAL, 0);
    let ticks = u32::MAX - left;
    let stored = if ticks == 0 || ticks == u32::MAX {
        u32::MAX
    } else {
        ticks
    };
    TICKS_PER_MS.store(stored, Ordering::Relaxed);
    (stored != u32::MAX).then_some(stored)
}

/// Sleeps (`sti; hlt`) for at most `us` microseconds: arms the local APIC
/// timer in one-shot mode, halts with interrupts enabled until the first
/// interrupt (taken, its handler run), then masks interrupts and stops the
/// timer. Without a usable timer it only opens an interrupt window and
/// returns, so a caller's loop polls instead of sleeping: a halt with
/// nothing armed to end it could last for ever.
pub fn idle(us: u64) {
    let Some(per_ms) = timer_ticks_per_ms() else {
        // SAFETY: every gate 32-255 returns (see `wait_vector`); the window
        // is one instruction long.
        unsafe { arch::enable_interrupts() };
        core::hint::spin_loop();
        arch::disable_interrupts();
        return;
    };
    let count = (u64::from(per_ms) * us / 1000).clamp(1, u64::from(u32::MAX)) as u32;
    timer_write(XAPIC_LVT_TIMER, X2APIC_LVT_TIMER, u32::from(TIMER_VECTOR));
    timer_write(XAPIC_TIMER_DIVIDE, X2APIC_TIMER_DIVIDE, TIMER_DIVIDE_16);
    timer_write(XAPIC_TIMER_INITIAL, X2APIC_TIMER_INITIAL, count);
    // SAFETY: every gate 32-255 leads to a stub that runs the handler,
    // sends the EOI and returns; the timer is armed, so the halt ends by
    // its expiry at the latest.
    unsafe { arch::enable_interrupts_and_halt() };
    arch::disable_interrupts();
    timer_write(XAPIC_TIMER_INITIAL, X2APIC_TIMER_INITIAL, 0);
    timer_write(
        XAPIC_LVT_TIMER,
        X2APIC_LVT_TIMER,
        LVT_MASKED | u32::from(TIMER_VECTOR),
    );
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
///
/// The sleep timer's vector only ends (it is not logged); any other runs
/// its registered handler ([`crate::irq`]) and, if that asks, has its
/// IOAPIC pin masked, before the EOI: for a level-triggered vector the EOI
/// is what clears the IOAPIC's Remote IRR, after which a line still
/// asserted fires again.
pub(crate) fn handle_interrupt(vector: u8) {
    if vector == SPURIOUS_VECTOR {
        SPURIOUS.store(SPURIOUS.load(Ordering::Relaxed) + 1, Ordering::Release);
        return;
    }
    if vector == TIMER_VECTOR {
        eoi();
        return;
    }
    let n = RECEIVED.load(Ordering::Relaxed);
    LAST[n as usize % LOG_LEN].store(vector, Ordering::Relaxed);
    RECEIVED.store(n.wrapping_add(1), Ordering::Release);
    if let Some(gsi) = crate::irq::dispatch(u32::from(vector)) {
        crate::ioapic::set_masked(gsi, true);
    }
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
