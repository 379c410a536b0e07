//! Ordering between the CPU's writes to memory the SMMU reads (queues,
//! tables) and the register writes that tell the SMMU to look.

/// Makes earlier memory writes visible to the SMMU before later writes
/// (memory or MMIO): `dsb st` on aarch64, a full fence elsewhere (x86 keeps
/// stores in order; the fence stops the compiler).
#[inline]
pub(crate) fn publish() {
    #[cfg(all(target_arch = "aarch64", not(test)))]
    // SAFETY: a barrier instruction has no effect besides ordering.
    unsafe {
        core::arch::asm!("dsb st", options(nostack, preserves_flags))
    };
    #[cfg(not(all(target_arch = "aarch64", not(test))))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

/// Orders a register read (e.g. a producer index) before later memory reads
/// of what it announced: `dsb ld` on aarch64, a full fence elsewhere.
#[inline]
pub(crate) fn consume() {
    #[cfg(all(target_arch = "aarch64", not(test)))]
    // SAFETY: a barrier instruction has no effect besides ordering.
    unsafe {
        core::arch::asm!("dsb ld", options(nostack, preserves_flags))
    };
    #[cfg(not(all(target_arch = "aarch64", not(test))))]
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}
