//! The `intx` scenario (`-append intx`): edu's legacy INTx, no MSI.
//!
//! With MSI off, writing edu's raise register (0x60) sets bits of its
//! interrupt status (0x24) and asserts INTA# until they are all
//! acknowledged (0x64). The line is routed with `platform::intx` (q35: an
//! I/O APIC GSI and vector; virt: a GIC SPI from the device tree's
//! `interrupt-map`), and its handler reads the status, acknowledges it and
//! records both. Checked:
//!
//! 1. three raises, with different bits, each run the handler exactly once
//!    and it sees exactly the raised bits; after the acknowledgements no
//!    interrupt arrives within [`QUIET_MS`] (a line left asserted would
//!    fire again at once, for ever);
//! 2. a raise while the line is masked runs nothing within [`QUIET_MS`]
//!    (edu's status keeps the bit), and runs the handler once as soon as
//!    the line is unmasked.
//!
//! Every wait is bounded: a missing interrupt is a typed timeout.

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use platform::edu::{self, Edu};
use platform::intx::{self, Handled, IntxError, IntxLine};
use platform::pci::{self, PciError};
use platform::{BootInfo, demo, irq, println};
use spin::Mutex;

use crate::NAME;

/// How long a raised interrupt may take to arrive.
const WAIT_MS: u64 = 1000;
/// How long nothing must arrive when nothing should.
const QUIET_MS: u64 = 200;
/// The bits raised, one per round.
const RAISES: [u32; 3] = [0x1, 0x100, 0x8000_0000];
/// Raised while the line is masked.
const MASKED_RAISE: u32 = 0x40;

/// The edu, shared with the handler. The main code locks it only while
/// interrupts are masked (outside waits), so the handler's `try_lock`
/// gets it.
static EDU: Mutex<Option<Edu>> = Mutex::new(None);
/// The status the handler saw last (only the handler writes it).
static LAST_STATUS: AtomicU32 = AtomicU32::new(0);
/// Edu's status after the handler's acknowledgement (should be 0).
static AFTER_ACK: AtomicU32 = AtomicU32::new(u32::MAX);

/// Why the scenario failed.
#[derive(Debug)]
pub enum IntxCheckError {
    /// Finding edu's BDF failed.
    Pci(PciError),
    /// edu is not on the bus (after `open_edu` found it: should not happen).
    NoEdu,
    /// Routing or enabling the line failed.
    Intx(IntxError),
    /// An interrupt did not arrive in time (what was waited for).
    Timeout(&'static str),
    /// Something other than expected happened (what, expected, found).
    Wrong(&'static str, u32, u32),
}

impl fmt::Display for IntxCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(e) => write!(f, "{e}"),
            Self::NoEdu => f.write_str("edu vanished from the bus"),
            Self::Intx(e) => write!(f, "{e}"),
            Self::Timeout(what) => write!(f, "intx: {what}: no interrupt within {WAIT_MS} ms"),
            Self::Wrong(what, expected, found) => {
                write!(f, "intx: {what}: expected {expected:#x}, found {found:#x}")
            }
        }
    }
}

impl From<IntxError> for IntxCheckError {
    fn from(e: IntxError) -> Self {
        Self::Intx(e)
    }
}

/// The INTx handler: reads edu's status, acknowledges exactly those bits
/// (which lowers the line), records what it saw. Without the edu (lock
/// taken, or none) it cannot lower the line: the platform masks it.
fn on_intx() -> Handled {
    let Some(mut guard) = EDU.try_lock() else {
        return Handled::Mask;
    };
    let Some(edu) = guard.as_mut() else {
        return Handled::Mask;
    };
    let status = edu.irq_status();
    edu.ack_irq(status);
    LAST_STATUS.store(status, Ordering::Release);
    AFTER_ACK.store(edu.irq_status(), Ordering::Release);
    Handled::Done
}

fn with_edu<T>(f: impl FnOnce(&mut Edu) -> T) -> Result<T, IntxCheckError> {
    EDU.lock().as_mut().map(f).ok_or(IntxCheckError::NoEdu)
}

fn expect(what: &'static str, expected: u32, found: u32) -> Result<(), IntxCheckError> {
    if expected == found {
        Ok(())
    } else {
        Err(IntxCheckError::Wrong(what, expected, found))
    }
}

/// Raises `bits` and waits for the handler to run once for them.
fn raise_and_take(line: &IntxLine, bits: u32, what: &'static str) -> Result<(), IntxCheckError> {
    let runs = line.runs();
    with_edu(|e| e.raise_irq(bits))?;
    line.wait(WAIT_MS)
        .map_err(|_| IntxCheckError::Timeout(what))?;
    expect(what, runs + 1, line.runs())?;
    expect(
        "status seen by the handler",
        bits,
        LAST_STATUS.load(Ordering::Acquire),
    )?;
    expect(
        "status after the handler's ack",
        0,
        AFTER_ACK.load(Ordering::Acquire),
    )
}

/// Nothing may arrive for [`QUIET_MS`].
fn quiet(what: &'static str, line: &IntxLine, runs: u32) -> Result<(), IntxCheckError> {
    if irq::wait_for_interrupt(QUIET_MS) {
        return Err(IntxCheckError::Wrong(what, runs, line.runs()));
    }
    expect(what, runs, line.runs())
}

pub fn run(boot: &BootInfo, mut edu: Edu) -> Result<(), IntxCheckError> {
    let host = pci::discover(boot).map_err(IntxCheckError::Pci)?;
    let bdf = host
        .find(edu::VENDOR_ID, edu::DEVICE_ID)
        .ok_or(IntxCheckError::NoEdu)?
        .bdf;
    let line = intx::route(boot, host.ecam(), bdf)?;
    println!("{NAME}: {line}");
    demo!("device", "edu at {bdf}, MSI off: its {line}");
    // Nothing raised before the handler exists.
    edu.ack_irq(u32::MAX);
    *EDU.lock() = Some(edu);
    line.enable(on_intx)?;
    quiet("interrupts before any raise", &line, 0)?;

    for (round, &bits) in RAISES.iter().enumerate() {
        raise_and_take(&line, bits, "raise")?;
        println!(
            "{NAME}: intx: raise {} ({bits:#x}) -> handler run {} saw status {bits:#x}, acked",
            round + 1,
            line.runs()
        );
    }
    quiet("interrupts after the acks", &line, RAISES.len() as u32)?;
    println!(
        "{NAME}: intx: {n} raises -> {n} handler runs, none more within {QUIET_MS} ms after the acks",
        n = line.runs()
    );

    line.mask();
    with_edu(|e| e.raise_irq(MASKED_RAISE))?;
    quiet("interrupts while masked", &line, RAISES.len() as u32)?;
    expect(
        "edu status while masked",
        MASKED_RAISE,
        with_edu(|e| e.irq_status())?,
    )?;
    let runs = line.runs();
    line.unmask();
    line.wait(WAIT_MS)
        .map_err(|_| IntxCheckError::Timeout("unmask after a masked raise"))?;
    expect("runs after unmask", runs + 1, line.runs())?;
    expect(
        "status seen after unmask",
        MASKED_RAISE,
        LAST_STATUS.load(Ordering::Acquire),
    )?;
    quiet("interrupts after the unmasked ack", &line, runs + 1)?;
    println!(
        "{NAME}: intx: raise while masked -> nothing within {QUIET_MS} ms (status {MASKED_RAISE:#x} held), unmask -> 1 handler run"
    );
    line.disable();
    demo!(
        "interrupt",
        "{} handler runs for {} raises, each acked at edu; none extra; masked raise held until unmask",
        line.runs(),
        RAISES.len() + 1
    );
    println!("{NAME}: scenario `intx` passed");
    demo!("result", "OK");
    Ok(())
}
