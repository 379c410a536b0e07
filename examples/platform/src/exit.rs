//! Ending the program with a status QEMU reports as its own exit status.
//!
//! * aarch64: Arm semihosting `SYS_EXIT` (`HLT #0xF000`, w0 = 0x18, x1 ->
//!   `{ADP_Stopped_ApplicationExit, subcode}`); QEMU must run with
//!   `-semihosting-config enable=on,target=native`. QEMU exits with `subcode`:
//!   [`AARCH64_SUCCESS`] or [`AARCH64_FAILURE`].
//! * x86_64: `isa-debug-exit` at I/O port 0xF4 (`-device
//!   isa-debug-exit,iobase=0xf4,iosize=0x04`); writing `v` makes QEMU exit with
//!   `(v << 1) | 1`: [`X86_64_SUCCESS`] or [`X86_64_FAILURE`].
//!
//! If the exit device is missing the CPU just halts, and the harness's timeout
//! reports the run as failed.

use core::sync::atomic::{AtomicBool, Ordering};

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Everything checked out.
    Success,
    /// Something went wrong (the reason has been printed).
    Failure,
}

/// QEMU's exit status for [`ExitStatus::Success`] on aarch64.
pub const AARCH64_SUCCESS: i32 = 0;
/// QEMU's exit status for [`ExitStatus::Failure`] on aarch64.
pub const AARCH64_FAILURE: i32 = 1;
/// Value written to `isa-debug-exit` for [`ExitStatus::Success`] on x86_64.
pub const X86_64_SUCCESS_VALUE: u8 = 0x10;
/// Value written to `isa-debug-exit` for [`ExitStatus::Failure`] on x86_64.
pub const X86_64_FAILURE_VALUE: u8 = 0x11;
/// QEMU's exit status for [`ExitStatus::Success`] on x86_64: `(0x10 << 1) | 1`.
pub const X86_64_SUCCESS: i32 = ((X86_64_SUCCESS_VALUE as i32) << 1) | 1;
/// QEMU's exit status for [`ExitStatus::Failure`] on x86_64: `(0x11 << 1) | 1`.
pub const X86_64_FAILURE: i32 = ((X86_64_FAILURE_VALUE as i32) << 1) | 1;

static EXITING: AtomicBool = AtomicBool::new(false);

/// Whether [`exit`] has been called (used to explain a fault in the exit path).
pub fn is_exiting() -> bool {
    EXITING.load(Ordering::Relaxed)
}

/// Ends the program (and QEMU) with `status`. Never returns.
///
/// If the exit mechanism itself faults (aarch64 without semihosting: `HLT` is
/// undefined), the exception is reported once and the CPU then halts here
/// instead of recursing; the harness's timeout ends the run.
pub fn exit(status: ExitStatus) -> ! {
    // Plain load + store, no read-modify-write: see `frames::FrameAllocator::take`.
    if EXITING.load(Ordering::Relaxed) {
        crate::arch::halt();
    }
    EXITING.store(true, Ordering::Relaxed);
    crate::arch::exit(status)
}
