//! Where the driver's buffers are in physical memory.

use iova_core::PhysAddr;

/// Translates the CPU's virtual addresses of driver buffers to physical ones.
///
/// `share` receives a virtual pointer; linking it needs physical addresses. In
/// a hypervisor the two differ and a buffer that is contiguous for the CPU may
/// be scattered in physical memory, so a translation also says how far the
/// physical run goes.
pub trait CpuMemory: Sync {
    /// The physical address of `va` and how many bytes from `va` on (at most
    /// `len`, at least 1) are physically contiguous, or `None` if `va` is not
    /// memory a device may be given.
    fn virt_to_phys(&self, va: usize, len: usize) -> Option<(PhysAddr, usize)>;
}

/// Memory mapped one to one: a virtual address is its physical address
/// (unikernels and firmware that run with an identity map or the MMU off).
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityMapped;

impl CpuMemory for IdentityMapped {
    fn virt_to_phys(&self, va: usize, len: usize) -> Option<(PhysAddr, usize)> {
        Some((PhysAddr(va as u64), len))
    }
}
