//! aarch64 QEMU `virt`, booted with `-kernel image.elf` (no firmware).
//!
//! Entry state (QEMU `hw/arm/boot.c`): EL1 (EL2 with `virtualization=on`),
//! MMU and caches off, DAIF masked, FP/SIMD trapped, x0 is *not* the DTB; the
//! DTB is at the start of RAM (0x4000_0000). With the MMU off every data
//! access is Device-nGnRnE, which is why the target has `+strict-align`.
//!
//! The stub drops from EL2 to EL1 if needed, enables FP/SIMD (CPACR_EL1.FPEN),
//! sets up the stack, zeroes `.bss`, installs an exception vector table that
//! reports and exits (IRQs at the current EL excepted: they go to
//! [`crate::gic`]'s handler and return), and calls into Rust. EL3 (`secure=on`) runs at EL3
//! without vectors.
//!
//! An example that plays hypervisor (`platform::entry!(main, stay_at_el2)`)
//! stays at EL2 when QEMU enters it there (`-M virt,virtualization=on`): the
//! stub then untraps FP/SIMD in CPTR_EL2 and installs the same vectors in
//! VBAR_EL2, and the exception reporter reads the EL2 syndrome registers.
//! Entered at EL1 (plain `virt`) such an example runs at EL1 like any other;
//! [`current_el`] says which it got. The generic timer's counter and
//! semihosting need nothing extra at EL2.

use core::arch::{asm, global_asm};
use core::fmt;

use crate::dtb::{DtbError, Fdt};
use crate::exit::{AARCH64_FAILURE, AARCH64_SUCCESS, ExitStatus};
use crate::mmio;
use crate::pci::{PciError, PciHost};

/// Where QEMU puts the device tree.
pub const DTB_ADDR: usize = 0x4000_0000;
/// Largest device tree we accept: the space below our image (linked at 0x4020_0000).
pub const DTB_MAX_SIZE: usize = 0x20_0000;
/// PL011 UART base on `virt`.
pub const PL011_BASE: usize = 0x0900_0000;

global_asm!(
    r#"
    .section .text.boot, "ax"
    .globl _start
_start:
    mrs     x0, CurrentEL
    ubfx    x0, x0, #2, #2
    cmp     x0, #2
    b.ne    1f

    // At EL2: EL1 is AArch64, EL1 may use the physical timer, FP/SIMD not
    // trapped (CPTR_EL2.TFP = 0 untraps EL2's own use too).
    mov     x1, #(1 << 31)
    msr     hcr_el2, x1
    mov     x1, #3
    msr     cnthctl_el2, x1
    msr     cntvoff_el2, xzr
    mov     x1, #0x33ff
    msr     cptr_el2, x1
    // The example's choice (`entry!`): stay here, or drop to EL1h with DAIF
    // masked.
    adrp    x1, platform_aarch64_stay_at_el2
    ldrb    w1, [x1, :lo12:platform_aarch64_stay_at_el2]
    cbnz    w1, 1f
    mov     x1, #0x3c5
    msr     spsr_el2, x1
    adr     x1, 1f
    msr     elr_el2, x1
    eret

1:
    // FP/SIMD on: CPACR_EL1.FPEN = 0b11 (Rust code may use NEON registers).
    mov     x1, #(3 << 20)
    msr     cpacr_el1, x1
    isb

    adrp    x1, __stack_top
    add     x1, x1, :lo12:__stack_top
    mov     sp, x1

    // Zero .bss (16-byte aligned at both ends by the linker script).
    adrp    x1, __bss_start
    add     x1, x1, :lo12:__bss_start
    adrp    x2, __bss_end
    add     x2, x2, :lo12:__bss_end
2:  cmp     x1, x2
    b.hs    3f
    stp     xzr, xzr, [x1], #16
    b       2b
3:
    mrs     x0, CurrentEL
    ubfx    x0, x0, #2, #2
    adrp    x1, platform_aarch64_vectors
    add     x1, x1, :lo12:platform_aarch64_vectors
    cmp     x0, #1
    b.ne    7f
    msr     vbar_el1, x1
    isb
    b       4f
7:  cmp     x0, #2
    b.ne    4f
    msr     vbar_el2, x1
    isb
4:
    bl      platform_aarch64_start
5:  wfe
    b       5b

    // Exception vectors (VBAR_EL1, or VBAR_EL2 when staying at EL2): 16
    // entries of 0x80 bytes; each passes its index, the syndrome registers of
    // the EL it was taken to and that EL to Rust, which reports and exits.
    // Except entry 5, an IRQ at the current EL on SP_ELx (where we run):
    // it is handled (see `gic`) and returns.
    .section .text.vectors, "ax"
    .balign 0x800
    .globl platform_aarch64_vectors
platform_aarch64_vectors:
    .irp    i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 0x80
    .if     \i == 5
    b       platform_aarch64_irq_entry
    .else
    mov     x0, #\i
    b       platform_aarch64_exception_common
    .endif
    .endr

    // IRQ: save every register a Rust call may clobber (x0-x18, x29, x30,
    // all of q0-q31: the interrupted code may be anywhere IRQs are
    // unmasked), call the handler, restore, return. IRQs stay masked
    // throughout (the exception set DAIF.I), so ELR/SPSR are not
    // overwritten by a nested one. 688 bytes keep SP 16-byte aligned.
platform_aarch64_irq_entry:
    sub     sp, sp, #688
    stp     x0, x1, [sp, #0]
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x29, [sp, #144]
    str     x30, [sp, #160]
    stp     q0, q1, [sp, #176]
    stp     q2, q3, [sp, #208]
    stp     q4, q5, [sp, #240]
    stp     q6, q7, [sp, #272]
    stp     q8, q9, [sp, #304]
    stp     q10, q11, [sp, #336]
    stp     q12, q13, [sp, #368]
    stp     q14, q15, [sp, #400]
    stp     q16, q17, [sp, #432]
    stp     q18, q19, [sp, #464]
    stp     q20, q21, [sp, #496]
    stp     q22, q23, [sp, #528]
    stp     q24, q25, [sp, #560]
    stp     q26, q27, [sp, #592]
    stp     q28, q29, [sp, #624]
    stp     q30, q31, [sp, #656]
    bl      platform_aarch64_irq
    ldp     q30, q31, [sp, #656]
    ldp     q28, q29, [sp, #624]
    ldp     q26, q27, [sp, #592]
    ldp     q24, q25, [sp, #560]
    ldp     q22, q23, [sp, #528]
    ldp     q20, q21, [sp, #496]
    ldp     q18, q19, [sp, #464]
    ldp     q16, q17, [sp, #432]
    ldp     q14, q15, [sp, #400]
    ldp     q12, q13, [sp, #368]
    ldp     q10, q11, [sp, #336]
    ldp     q8, q9, [sp, #304]
    ldp     q6, q7, [sp, #272]
    ldp     q4, q5, [sp, #240]
    ldp     q2, q3, [sp, #208]
    ldp     q0, q1, [sp, #176]
    ldr     x30, [sp, #160]
    ldp     x18, x29, [sp, #144]
    ldp     x16, x17, [sp, #128]
    ldp     x14, x15, [sp, #112]
    ldp     x12, x13, [sp, #96]
    ldp     x10, x11, [sp, #80]
    ldp     x8, x9, [sp, #64]
    ldp     x6, x7, [sp, #48]
    ldp     x4, x5, [sp, #32]
    ldp     x2, x3, [sp, #16]
    ldp     x0, x1, [sp, #0]
    add     sp, sp, #688
    eret
platform_aarch64_exception_common:
    mrs     x5, CurrentEL
    ubfx    x5, x5, #2, #2
    cmp     x5, #2
    b.eq    7f
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    mrs     x4, spsr_el1
    b       8f
7:  mrs     x1, esr_el2
    mrs     x2, elr_el2
    mrs     x3, far_el2
    mrs     x4, spsr_el2
8:  bl      platform_aarch64_exception
6:  wfe
    b       6b
    .text
"#
);

/// What the boot stub found.
#[derive(Debug, Clone, Copy)]
pub struct ArchBootInfo {
    /// Exception level we run at (1; 2 with `virtualization=on` for an
    /// example that stays at EL2; 3 with `secure=on`).
    pub current_el: u8,
    /// The device tree QEMU passed at [`DTB_ADDR`], or why it is unusable.
    pub dtb: Result<Fdt<'static>, DtbError>,
}

#[unsafe(no_mangle)]
extern "C" fn platform_aarch64_start(current_el: u64) -> ! {
    // SAFETY: QEMU places the DTB at the start of RAM and our image starts
    // DTB_MAX_SIZE above it, so the range is RAM that nothing writes to.
    let dtb = unsafe { Fdt::from_addr(DTB_ADDR, DTB_MAX_SIZE) };
    let mut ram = [(0, 0); crate::MAX_RAM_REGIONS];
    let ram_regions = dtb
        .as_ref()
        .ok()
        .and_then(|fdt| fdt.memory_regions(&mut ram).ok())
        .unwrap_or(0);
    crate::start(crate::BootInfo {
        machine: "aarch64 QEMU virt",
        ram,
        ram_regions,
        arch: ArchBootInfo {
            current_el: current_el as u8,
            dtb,
        },
    })
}

const EXCEPTION_KINDS: [&str; 4] = ["synchronous", "IRQ", "FIQ", "SError"];
const EXCEPTION_ORIGINS: [&str; 4] = [
    "current EL, SP_EL0",
    "current EL, SP_ELx",
    "lower EL, AArch64",
    "lower EL, AArch32",
];

#[unsafe(no_mangle)]
extern "C" fn platform_aarch64_exception(
    index: u64,
    esr: u64,
    elr: u64,
    far: u64,
    spsr: u64,
    el: u64,
) -> ! {
    let index = (index & 15) as usize;
    let hint = if crate::exit::is_exiting() && esr >> 26 == 0 {
        " (HLT #0xF000 trapped while exiting: run QEMU with -semihosting-config enable=on,target=native)"
    } else {
        ""
    };
    crate::report_fatal(format_args!(
        "exception: {} from {} (vector {index}): ESR_EL{el} {esr:#x} (EC {:#x}), ELR_EL{el} {elr:#x}, FAR_EL{el} {far:#x}, SPSR_EL{el} {spsr:#x}{hint}",
        EXCEPTION_KINDS[index % 4],
        EXCEPTION_ORIGINS[index / 4],
        esr >> 26,
    ))
}

/// Writes one byte to the PL011, waiting (bounded) while its FIFO is full.
/// QEMU's PL011 needs no initialisation.
pub fn console_putc(byte: u8) {
    const DR: usize = 0x00;
    const FR: usize = 0x18;
    const FR_TXFF: u32 = 1 << 5;
    for _ in 0..100_000 {
        // SAFETY: PL011_BASE is the `virt` machine's PL011; FR is a read-only
        // status register.
        if unsafe { mmio::read32(PL011_BASE + FR) } & FR_TXFF == 0 {
            break;
        }
    }
    // SAFETY: writing DR queues one byte for transmission; nothing else.
    unsafe { mmio::write32(PL011_BASE + DR, u32::from(byte)) }
}

/// Ends the program through semihosting `SYS_EXIT`.
pub fn exit(status: ExitStatus) -> ! {
    let code = match status {
        ExitStatus::Success => AARCH64_SUCCESS,
        ExitStatus::Failure => AARCH64_FAILURE,
    };
    let block: [u64; 2] = [0x20026, code as u64]; // ADP_Stopped_ApplicationExit, subcode
    // SAFETY: the semihosting call reads the two-word block we pass and exits
    // QEMU. Without semihosting enabled HLT is undefined and traps to our
    // vector, which reports it.
    unsafe {
        asm!("hlt #0xf000", inout("x0") 0x18u64 => _, in("x1") block.as_ptr(), options(nostack));
    }
    halt()
}

/// The exception level the CPU runs at now (`CurrentEL.EL`: 1, 2 or 3).
pub fn current_el() -> u8 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects and is allowed at EL1 and above.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack, preserves_flags)) };
    ((el >> 2) & 3) as u8
}

/// Stops the CPU for good.
pub fn halt() -> ! {
    loop {
        // SAFETY: waiting for an event has no memory effects.
        unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
    }
}

/// The generic timer: (`CNTPCT_EL0`, `CNTFRQ_EL0`).
pub fn clock() -> Option<(u64, u64)> {
    let freq: u64;
    let count: u64;
    // SAFETY: reading the timer registers has no side effects; EL1 access is
    // allowed (the stub set CNTHCTL_EL2 when coming from EL2), EL2 and EL3
    // access always is.
    unsafe {
        asm!("mrs {}, cntfrq_el0", out(reg) freq, options(nomem, nostack, preserves_flags));
        asm!("isb", "mrs {}, cntpct_el0", out(reg) count, options(nomem, nostack, preserves_flags));
    }
    (freq != 0).then_some((count, freq))
}

/// A cheap, monotonic tick count for profiling (`CNTVCT_EL0`, no barrier):
/// only differences between two reads mean anything.
pub fn cycles() -> u64 {
    let count: u64;
    // SAFETY: reading the virtual counter has no side effects and is allowed
    // at every EL the examples run at (see `clock`).
    unsafe { asm!("mrs {}, cntvct_el0", out(reg) count, options(nomem, nostack, preserves_flags)) };
    count
}

/// Full barrier between CPU memory accesses and a device's DMA (`dsb sy`).
/// Also a compiler barrier.
pub fn dma_barrier() {
    // SAFETY: a barrier has no effect besides ordering.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}

/// With the MMU off every physical address the CPU implements is reachable.
pub fn cpu_can_reach(addr: u64, size: u64) -> bool {
    addr.checked_add(size).is_some_and(|end| end <= 1 << 48)
}

/// The ECAM host bridge described by the device tree.
pub fn discover_pci(boot: &crate::BootInfo) -> Result<PciHost, PciError> {
    let fdt = boot.arch.dtb.map_err(PciError::Dtb)?;
    crate::pci::from_device_tree(&fdt)
}

/// One line about the boot environment, for the banner.
pub fn describe(boot: &crate::BootInfo, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    write!(f, "EL{}, ", boot.arch.current_el)?;
    match &boot.arch.dtb {
        Ok(fdt) => write!(f, "DTB at {DTB_ADDR:#x} ({} bytes)", fdt.total_size()),
        Err(e) => write!(f, "no usable DTB at {DTB_ADDR:#x}: {e}"),
    }
}
