//! x86_64 QEMU `q35`, booted with `-kernel image.elf` through PVH.
//!
//! SeaBIOS runs POST (enables MMCONFIG, assigns BARs, builds ACPI), then its
//! `pvh.bin` option ROM jumps to our 32-bit entry `_start32` (named by the
//! XEN_ELFNOTE_PHYS32_ENTRY note) in protected mode, paging off, interrupts
//! off, EBX = physical address of `struct hvm_start_info`.
//!
//! The stub loads its own GDT, builds identity page tables for 0-4 GiB with
//! 2 MiB pages (2-4 GiB, where q35 puts MMCONFIG and PCI BARs, uncached),
//! enables PAE + long mode + paging, and calls into Rust with the start-info
//! address. Rust then installs an IDT whose handlers report the exception and
//! exit. The target is soft-float, so SSE need not be enabled.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;
use core::fmt;

use crate::exit::{ExitStatus, X86_64_FAILURE_VALUE, X86_64_SUCCESS_VALUE};
use crate::mmio;
use crate::pci::{Bdf, Ecam, PciError, PciHost};

/// COM1 base I/O port.
pub const COM1: u16 = 0x3f8;
/// `isa-debug-exit` I/O port (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// HPET base on q35.
pub const HPET_BASE: usize = 0xfed0_0000;
/// `hvm_start_info.magic`.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Everything below this is identity-mapped by the boot stub.
pub const IDENTITY_MAP_END: u64 = 1 << 32;

global_asm!(
    r#"
    .section .note.pvh, "a", @note
    .balign 4
    .long   4                   // name size ("Xen\0")
    .long   8                   // desc size
    .long   18                  // XEN_ELFNOTE_PHYS32_ENTRY
    .asciz  "Xen"
    .balign 4
    .quad   _start32

    .section .text.boot, "ax"
    .code32
    .globl  _start32
_start32:
    cli
    cld
    movl    $__stack_top, %esp
    movl    %ebx, %esi                  // hvm_start_info, kept in esi

    // Zero .bss, which holds the page tables below.
    movl    $__bss_start, %edi
    movl    $__bss_end, %ecx
    subl    %edi, %ecx
    xorl    %eax, %eax
    rep stosb

    // PML4[0] -> PDPT
    movl    $platform_boot_pdpt, %eax
    orl     $0x3, %eax                  // present, writable
    movl    %eax, platform_boot_pml4

    // PDPT[0..4] -> PD[0..4]
    xorl    %ecx, %ecx
1:  movl    %ecx, %eax
    shll    $12, %eax
    addl    $platform_boot_pd, %eax
    orl     $0x3, %eax
    movl    %eax, platform_boot_pdpt(,%ecx,8)
    incl    %ecx
    cmpl    $4, %ecx
    jb      1b

    // PD: 2048 x 2 MiB pages mapping 0-4 GiB 1:1. From 2 GiB up (q35's
    // MMCONFIG, PCI BARs, HPET, LAPIC/IOAPIC) PCD|PWT make them uncached.
    xorl    %ecx, %ecx
2:  movl    %ecx, %eax
    shll    $21, %eax
    orl     $0x83, %eax                 // present, writable, 2 MiB page
    cmpl    $1024, %ecx
    jb      3f
    orl     $0x18, %eax                 // PWT | PCD
3:  movl    %eax, platform_boot_pd(,%ecx,8)
    incl    %ecx
    cmpl    $2048, %ecx
    jb      2b

    movl    %cr4, %eax
    orl     $0x20, %eax                 // CR4.PAE
    movl    %eax, %cr4
    movl    $platform_boot_pml4, %eax
    movl    %eax, %cr3
    movl    $0xc0000080, %ecx           // IA32_EFER
    rdmsr
    orl     $0x100, %eax                // EFER.LME
    wrmsr
    movl    %cr0, %eax
    orl     $0x80000001, %eax           // CR0.PG | CR0.PE
    movl    %eax, %cr0

    lgdt    platform_boot_gdt_ptr
    pushl   $0x08                       // 64-bit code segment
    pushl   $platform_long_mode
    lret

    .code64
platform_long_mode:
    movw    $0x10, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movw    %ax, %fs
    movw    %ax, %gs
    movl    $__stack_top, %esp          // zero-extends into rsp
    movl    %esi, %edi                  // arg 0: hvm_start_info address
    call    platform_x86_64_start
4:  cli
    hlt
    jmp     4b

    // Exception stubs: push a dummy error code where the CPU pushes none, then
    // the vector number, and hand the frame to Rust.
    .macro PLATFORM_ISR_NOERR n
platform_isr_\n:
    pushq   $0
    pushq   $\n
    jmp     platform_isr_common
    .endm
    .macro PLATFORM_ISR_ERR n
platform_isr_\n:
    pushq   $\n
    jmp     platform_isr_common
    .endm
    PLATFORM_ISR_NOERR 0
    PLATFORM_ISR_NOERR 1
    PLATFORM_ISR_NOERR 2
    PLATFORM_ISR_NOERR 3
    PLATFORM_ISR_NOERR 4
    PLATFORM_ISR_NOERR 5
    PLATFORM_ISR_NOERR 6
    PLATFORM_ISR_NOERR 7
    PLATFORM_ISR_ERR   8
    PLATFORM_ISR_NOERR 9
    PLATFORM_ISR_ERR   10
    PLATFORM_ISR_ERR   11
    PLATFORM_ISR_ERR   12
    PLATFORM_ISR_ERR   13
    PLATFORM_ISR_ERR   14
    PLATFORM_ISR_NOERR 15
    PLATFORM_ISR_NOERR 16
    PLATFORM_ISR_ERR   17
    PLATFORM_ISR_NOERR 18
    PLATFORM_ISR_NOERR 19
    PLATFORM_ISR_NOERR 20
    PLATFORM_ISR_ERR   21
    PLATFORM_ISR_NOERR 22
    PLATFORM_ISR_NOERR 23
    PLATFORM_ISR_NOERR 24
    PLATFORM_ISR_NOERR 25
    PLATFORM_ISR_NOERR 26
    PLATFORM_ISR_NOERR 27
    PLATFORM_ISR_NOERR 28
    PLATFORM_ISR_ERR   29
    PLATFORM_ISR_ERR   30
    PLATFORM_ISR_NOERR 31
platform_isr_common:
    movq    %rsp, %rdi                  // &ExceptionFrame
    andq    $-16, %rsp
    call    platform_x86_64_exception
5:  cli
    hlt
    jmp     5b

    // Interrupt stubs (vectors 32-255): push the vector, save the registers
    // a Rust call may clobber, call the handler (which logs the vector and
    // sends the EOI), restore, return to the interrupted code. The target
    // has no red zone and no SSE state to save.
    .macro PLATFORM_IRQ n
platform_irq_\n:
    pushq   $\n
    jmp     platform_irq_common
    .endm
    .irp    i, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255
    PLATFORM_IRQ \i
    .endr
platform_irq_common:
    pushq   %rax
    pushq   %rcx
    pushq   %rdx
    pushq   %rsi
    pushq   %rdi
    pushq   %r8
    pushq   %r9
    pushq   %r10
    pushq   %r11
    pushq   %rbp
    movq    %rsp, %rbp
    movq    80(%rsp), %rdi              // the vector pushed by the stub
    andq    $-16, %rsp
    cld
    call    platform_x86_64_irq
    movq    %rbp, %rsp
    popq    %rbp
    popq    %r11
    popq    %r10
    popq    %r9
    popq    %r8
    popq    %rdi
    popq    %rsi
    popq    %rdx
    popq    %rcx
    popq    %rax
    addq    $8, %rsp                    // the vector
    iretq

    .section .rodata.platform_isr_table, "a"
    .balign 8
    .globl  platform_isr_table
platform_isr_table:
    .irp    i, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad   platform_isr_\i
    .endr
    .irp    i, 32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65,66,67,68,69,70,71,72,73,74,75,76,77,78,79,80,81,82,83,84,85,86,87,88,89,90,91,92,93,94,95,96,97,98,99,100,101,102,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,203,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255
    .quad   platform_irq_\i
    .endr

    .section .data.platform_boot_gdt, "aw"
    .balign 16
platform_boot_gdt:
    .quad   0
    .quad   0x00af9b000000ffff          // 0x08: 64-bit code, accessed
    .quad   0x00cf93000000ffff          // 0x10: flat data, accessed
platform_boot_gdt_end:
    .balign 8
platform_boot_gdt_ptr:
    .word   platform_boot_gdt_end - platform_boot_gdt - 1
    .quad   platform_boot_gdt

    .section .bss.platform_boot_pt, "aw", @nobits
    .balign 4096
platform_boot_pml4:
    .skip   4096
platform_boot_pdpt:
    .skip   4096
platform_boot_pd:
    .skip   4096 * 4
    .text
"#,
    options(att_syntax)
);

/// The parts of `struct hvm_start_info` we use.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartInfo {
    /// Physical address of the structure (EBX at entry).
    pub addr: u64,
    /// Structure version (1 has the memory map).
    pub version: u32,
    /// Physical address of the ACPI RSDP (0 if none).
    pub rsdp_paddr: u64,
    /// Physical address of the command line (0 if none).
    pub cmdline_paddr: u64,
    /// Number of memory-map entries.
    pub memmap_entries: u32,
}

/// What the boot stub found.
#[derive(Debug, Clone, Copy)]
pub struct ArchBootInfo {
    /// `hvm_start_info`, if EBX pointed at one with the right magic.
    pub start_info: Option<StartInfo>,
    /// EBX at entry.
    pub start_info_addr: u64,
    /// HPET clock frequency in Hz, if an HPET was found and enabled.
    pub hpet_hz: Option<u64>,
}

/// Reads a little-endian value of type `T` at physical address `addr`.
///
/// # Safety
///
/// `addr..addr + size_of::<T>()` must be identity-mapped RAM, and `T` valid
/// for any bit pattern.
unsafe fn read_phys<T: Copy>(addr: u64) -> T {
    // SAFETY: guaranteed by the caller; unaligned reads are fine on x86.
    unsafe { core::ptr::read_unaligned(addr as usize as *const T) }
}

fn parse_start_info(addr: u64, ram: &mut [(u64, u64)]) -> (Option<StartInfo>, usize) {
    // The structure is in low RAM, which the boot stub identity-mapped.
    if addr == 0 || addr >= IDENTITY_MAP_END - 64 {
        return (None, 0);
    }
    // SAFETY: `addr` came from the PVH loader in EBX and is in identity-mapped low memory.
    let magic: u32 = unsafe { read_phys(addr) };
    if magic != START_INFO_MAGIC {
        return (None, 0);
    }
    // SAFETY: the magic matched, so this is a hvm_start_info (56 bytes for version 1).
    let (version, cmdline, rsdp): (u32, u64, u64) = unsafe {
        (
            read_phys(addr + 4),
            read_phys(addr + 24),
            read_phys(addr + 32),
        )
    };
    let mut info = StartInfo {
        addr,
        version,
        rsdp_paddr: rsdp,
        cmdline_paddr: cmdline,
        memmap_entries: 0,
    };
    let mut n = 0;
    if version >= 1 {
        // SAFETY: version >= 1 structures have memmap_paddr/memmap_entries.
        let (memmap, entries): (u64, u32) = unsafe { (read_phys(addr + 40), read_phys(addr + 48)) };
        info.memmap_entries = entries;
        if memmap != 0 && memmap < IDENTITY_MAP_END - 24 * 256 {
            for i in 0..u64::from(entries.min(256)) {
                let entry = memmap + 24 * i;
                // SAFETY: each entry is {u64 addr, u64 size, u32 type, u32 reserved},
                // inside the loader-provided table in identity-mapped low memory.
                let (base, size, kind): (u64, u64, u32) = unsafe {
                    (
                        read_phys(entry),
                        read_phys(entry + 8),
                        read_phys(entry + 16),
                    )
                };
                if kind == 1 && n < ram.len() {
                    ram[n] = (base, size);
                    n += 1;
                }
            }
        }
    }
    (Some(info), n)
}

#[unsafe(no_mangle)]
extern "C" fn platform_x86_64_start(start_info_addr: u64) -> ! {
    init_idt();
    init_serial();
    let hpet_hz = init_hpet();
    let mut ram = [(0, 0); crate::MAX_RAM_REGIONS];
    let (start_info, ram_regions) = parse_start_info(start_info_addr, &mut ram);
    crate::start(crate::BootInfo {
        machine: "x86_64 QEMU q35",
        ram,
        ram_regions,
        arch: ArchBootInfo {
            start_info,
            start_info_addr,
            hpet_hz,
        },
    })
}

/// Reads an I/O port byte.
///
/// # Safety
///
/// Reading `port` must have no effect that breaks memory safety.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes an I/O port byte.
///
/// # Safety
///
/// Writing `port` must have no effect that breaks memory safety.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads an I/O port dword.
///
/// # Safety
///
/// Reading `port` must have no effect that breaks memory safety.
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes an I/O port dword.
///
/// # Safety
///
/// Writing `port` must have no effect that breaks memory safety.
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

fn init_serial() {
    // SAFETY: COM1's registers only affect the UART: no interrupts, DLAB on,
    // divisor 1 (115200 baud), 8N1, FIFOs on and cleared, DTR/RTS.
    unsafe {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xc7);
        outb(COM1 + 4, 0x03);
    }
}

/// Writes one byte to COM1, waiting (bounded) for the transmitter.
pub fn console_putc(byte: u8) {
    const LSR_THRE: u8 = 1 << 5;
    for _ in 0..100_000 {
        // SAFETY: reading the line status register has no side effects.
        if unsafe { inb(COM1 + 5) } & LSR_THRE != 0 {
            break;
        }
    }
    // SAFETY: writing the transmit register sends one byte.
    unsafe { outb(COM1, byte) }
}

/// Ends the program through `isa-debug-exit`.
pub fn exit(status: ExitStatus) -> ! {
    let value = match status {
        ExitStatus::Success => X86_64_SUCCESS_VALUE,
        ExitStatus::Failure => X86_64_FAILURE_VALUE,
    };
    // SAFETY: the debug-exit port makes QEMU exit; without the device the
    // write is ignored.
    unsafe { outb(DEBUG_EXIT_PORT, value) };
    halt()
}

/// Stops the CPU for good.
pub fn halt() -> ! {
    loop {
        // SAFETY: halting with interrupts off has no memory effects.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

const HPET_CAP: usize = 0x00;
const HPET_CONFIG: usize = 0x10;
const HPET_COUNTER: usize = 0xf0;

fn init_hpet() -> Option<u64> {
    // SAFETY: HPET_BASE is q35's HPET (identity-mapped, uncached); on a
    // machine without one the read hits unassigned space and returns 0 or
    // all-ones, which the range check below rejects.
    let cap = unsafe { mmio::read64(HPET_BASE + HPET_CAP) };
    let period_fs = cap >> 32;
    // The specification bounds the period to (0, 100 ns].
    if period_fs == 0 || period_fs > 100_000_000 {
        return None;
    }
    // SAFETY: setting ENABLE_CNF starts the main counter; no interrupts are
    // routed (LEG_RT_CNF and the timers' enable bits stay as they are: off).
    unsafe {
        let config = mmio::read64(HPET_BASE + HPET_CONFIG);
        mmio::write64(HPET_BASE + HPET_CONFIG, config | 1);
    }
    let hz = 1_000_000_000_000_000 / period_fs;
    HPET_HZ.0.set(hz);
    TSC_HZ.0.set(calibrate_tsc(hz));
    Some(hz)
}

/// The TSC's rate, measured against the HPET over 2 ms; 0 if that fails.
/// Every x86-64 CPU of the last fifteen years (and QEMU) runs the TSC at a
/// constant rate; reading it costs an instruction where the HPET costs an
/// MMIO read (under emulation, an exit to the device model and its lock,
/// which a polling loop would otherwise take on every poll).
fn calibrate_tsc(hpet_hz: u64) -> u64 {
    let hpet = || {
        // SAFETY: the HPET exists (its period was valid) and is enabled.
        unsafe { mmio::read64(HPET_BASE + HPET_COUNTER) }
    };
    let span = hpet_hz / 500;
    let (h0, t0) = (hpet(), cycles());
    // Bounded: a stuck HPET leaves the TSC unused rather than hanging.
    for _ in 0..10_000_000u32 {
        let h = hpet().wrapping_sub(h0);
        if h >= span {
            let t = cycles().wrapping_sub(t0);
            return ((t as u128 * hpet_hz as u128) / h as u128) as u64;
        }
    }
    0
}

/// A rate written once during boot.
struct HpetHz(core::cell::Cell<u64>);
// SAFETY: written once during boot before anything reads it; single-threaded.
unsafe impl Sync for HpetHz {}
static HPET_HZ: HpetHz = HpetHz(core::cell::Cell::new(0));

static TSC_HZ: HpetHz = HpetHz(core::cell::Cell::new(0));

/// The TSC at its measured rate, else the HPET main counter, if one was
/// found.
pub fn clock() -> Option<(u64, u64)> {
    let tsc_hz = TSC_HZ.0.get();
    if tsc_hz != 0 {
        return Some((cycles(), tsc_hz));
    }
    let hz = HPET_HZ.0.get();
    if hz == 0 {
        return None;
    }
    // SAFETY: the HPET exists (hz was set by init_hpet); reading the counter
    // has no side effects.
    let count = unsafe { mmio::read64(HPET_BASE + HPET_COUNTER) };
    Some((count, hz))
}

/// A cheap, monotonic tick count (`rdtsc`): only differences between two
/// reads mean anything; [`clock`] gives its rate.
pub fn cycles() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` only reads the time-stamp counter.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Full barrier between CPU memory accesses and a device's DMA (`mfence`).
/// Also a compiler barrier.
pub fn dma_barrier() {
    // SAFETY: a fence has no effect besides ordering.
    unsafe { asm!("mfence", options(nostack, preserves_flags)) };
}

/// Whether `addr..addr + size` is identity-mapped.
pub fn cpu_can_reach(addr: u64, size: u64) -> bool {
    addr.checked_add(size)
        .is_some_and(|end| end <= IDENTITY_MAP_END)
}

fn cf8_read32(bdf: Bdf, offset: u8) -> u32 {
    let address = 0x8000_0000
        | (u32::from(bdf.bus) << 16)
        | (u32::from(bdf.device) << 11)
        | (u32::from(bdf.function) << 8)
        | u32::from(offset & 0xfc);
    // SAFETY: the legacy configuration mechanism: select a register through
    // 0xCF8 and read it through 0xCFC. Config reads have no side effects on
    // the host bridge.
    unsafe {
        outl(0xcf8, address);
        inl(0xcfc)
    }
}

/// q35: reads the MMCONFIG base from the host bridge's PCIEXBAR (offset 0x60),
/// as SeaBIOS programmed it. BARs are already assigned, so there is no window.
pub fn discover_pci(_boot: &crate::BootInfo) -> Result<PciHost, PciError> {
    let host = Bdf {
        bus: 0,
        device: 0,
        function: 0,
    };
    let id = cf8_read32(host, 0);
    let (vendor, device) = (id as u16, (id >> 16) as u16);
    if (vendor, device) != (0x8086, 0x29c0) {
        return Err(PciError::UnknownHostBridge(vendor, device));
    }
    let pciexbar = u64::from(cf8_read32(host, 0x60)) | (u64::from(cf8_read32(host, 0x64)) << 32);
    if pciexbar & 1 == 0 {
        return Err(PciError::MmconfigDisabled);
    }
    // LENGTH (bits 2:1): 0 = 256 buses, 1 = 128, 2 = 64. The base is aligned to the size.
    let buses: u64 = match (pciexbar >> 1) & 3 {
        0 => 256,
        1 => 128,
        2 => 64,
        _ => return Err(PciError::BadHost("reserved PCIEXBAR length")),
    };
    let size = buses << 20;
    let base = pciexbar & 0xf_ffff_ffff & !(size - 1);
    if !cpu_can_reach(base, size) {
        return Err(PciError::BadHost("MMCONFIG above 4 GiB"));
    }
    // SAFETY: PCIEXBAR is enabled and points at `buses` MiB of MMCONFIG,
    // inside the identity map.
    let ecam = unsafe { Ecam::new(base as usize, 0, (buses - 1) as u8) };
    Ok(PciHost::new(ecam, None))
}

/// One line about the boot environment, for the banner.
pub fn describe(boot: &crate::BootInfo, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match &boot.arch.start_info {
        Some(si) => write!(
            f,
            "PVH start_info at {:#x} (v{}, RSDP {:#x}, {} memmap entries)",
            si.addr, si.version, si.rsdp_paddr, si.memmap_entries
        )?,
        None => write!(
            f,
            "no hvm_start_info (EBX {:#x})",
            boot.arch.start_info_addr
        )?,
    }
    match boot.arch.hpet_hz {
        Some(hz) => write!(f, ", HPET {hz} Hz"),
        None => write!(f, ", no HPET"),
    }
}

// ---- Exceptions and interrupts ----

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

/// Gates: the 32 exceptions, then the interrupt vectors 32-255.
const IDT_ENTRIES: usize = 256;

#[repr(C, align(16))]
struct Idt(UnsafeCell<[IdtEntry; IDT_ENTRIES]>);

// SAFETY: written once by `init_idt` during single-threaded boot, then only
// read by the CPU.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new(
    [IdtEntry {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    }; IDT_ENTRIES],
));

unsafe extern "C" {
    /// Addresses of the 32 exception stubs and the 224 interrupt stubs
    /// (defined in the boot assembly).
    static platform_isr_table: [u64; IDT_ENTRIES];
}

#[repr(C, packed)]
struct DescriptorPointer {
    limit: u16,
    base: u64,
}

fn init_idt() {
    // SAFETY: the table is defined in the assembly above with 256 entries.
    let stubs = unsafe { &platform_isr_table };
    // SAFETY: boot is single-threaded and the IDT is not loaded yet, so this
    // is the only reference.
    let idt = unsafe { &mut *IDT.0.get() };
    for (entry, &stub) in idt.iter_mut().zip(stubs.iter()) {
        *entry = IdtEntry {
            offset_low: stub as u16,
            selector: 0x08,
            ist: 0,
            attributes: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (stub >> 16) as u16,
            offset_high: (stub >> 32) as u32,
            reserved: 0,
        };
    }
    let pointer = DescriptorPointer {
        limit: (core::mem::size_of::<[IdtEntry; IDT_ENTRIES]>() - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is static, fully initialised, and its gates point at
    // our stubs in the 64-bit code segment 0x08 of the boot GDT.
    unsafe { asm!("lidt [{}]", in(reg) &pointer, options(readonly, nostack, preserves_flags)) };
}

#[repr(C)]
struct ExceptionFrame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "NMI",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor overrun",
    "invalid TSS",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 FP",
    "alignment check",
    "machine check",
    "SIMD FP",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "VMM communication",
    "security",
    "reserved",
];

#[unsafe(no_mangle)]
extern "C" fn platform_x86_64_exception(frame: *const ExceptionFrame) -> ! {
    // SAFETY: the stub passes a pointer to the frame it and the CPU pushed.
    let frame = unsafe { &*frame };
    let cr2: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    let vector = frame.vector as usize;
    crate::report_fatal(format_args!(
        "exception: vector {vector} ({}), error code {:#x}, RIP {:#x}, CS {:#x}, RFLAGS {:#x}, RSP {:#x}, SS {:#x}, CR2 {cr2:#x}",
        EXCEPTION_NAMES.get(vector).copied().unwrap_or("?"),
        frame.error_code,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        frame.ss,
    ))
}

/// Called by the interrupt stubs (vectors 32-255) with interrupts disabled;
/// returns to the stub, which resumes the interrupted code.
#[unsafe(no_mangle)]
extern "C" fn platform_x86_64_irq(vector: u64) {
    crate::apic::handle_interrupt(vector as u8);
}

/// Reads a model-specific register.
///
/// # Safety
///
/// `msr` must exist on this CPU (else `#GP`, which the exception handler
/// reports fatally), and reading it must have no side effect that breaks
/// memory safety.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Writes a model-specific register.
///
/// # Safety
///
/// `msr` must exist and take `value`, and the write's effect (e.g. moving
/// the local APIC) must not break memory safety.
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// `cpuid` leaf `leaf`, subleaf 0: `(eax, ebx, ecx, edx)`.
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Enables maskable interrupts (`sti`).
///
/// # Safety
///
/// Every vector that can arrive must have a handler that returns (the IDT
/// gates 32-255 do; an exception vector would be fatal), and no code that
/// runs with interrupts enabled may hold state the handlers use.
pub unsafe fn enable_interrupts() {
    // SAFETY: guaranteed by the caller; `sti` changes only RFLAGS.IF.
    unsafe { asm!("sti", options(nostack)) };
}

/// Enables maskable interrupts and halts until the next one (`sti; hlt`:
/// `sti` takes effect after the next instruction, so an interrupt already
/// pending wakes the `hlt` instead of being taken before it and leaving
/// the CPU halted). Interrupts are still enabled on return.
///
/// # Safety
///
/// As for [`enable_interrupts`], and something must be armed to interrupt
/// the halt (a timer), or it may never end.
pub unsafe fn enable_interrupts_and_halt() {
    // SAFETY: guaranteed by the caller; changes RFLAGS.IF and waits.
    unsafe { asm!("sti", "hlt", options(nostack)) };
}

/// Disables maskable interrupts (`cli`).
pub fn disable_interrupts() {
    // SAFETY: `cli` changes only RFLAGS.IF; masking is always safe. (No
    // `nomem`: a compiler barrier, so reads of what handlers wrote stay
    // after it.)
    unsafe { asm!("cli", options(nostack)) };
}
