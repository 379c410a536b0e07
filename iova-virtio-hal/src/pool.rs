//! The bounce pool: frames mapped once in the domain, carved into slots that
//! small shares are copied into (no map, no flush) and that partial granules
//! of larger shares are bounced into (no frame allocation).
//!
//! Invariant: a free slot holds zeros, except for bytes the device itself
//! wrote into it while it was free (the whole pool stays mapped, so a device
//! can write any slot at any time). Whoever frees a slot first zeroes the
//! bytes the share put there (`Pool::zero`), so no driver data outlives its
//! share in the pool, and an honest device reading past a buffer reads zeros.

use core::ptr;

use iova_core::{FrameAllocator, IommuDomain, Iova, IovaState, PhysAddr};
use spin::Mutex;
use virtio_drivers::BufferDirection;

use crate::layout::Span;
use crate::shares::{Links, ShareError};

/// The most slots a pool may have.
pub const MAX_POOL_SLOTS: usize = 128;

/// How a [`DmaShares`](crate::DmaShares) table's bounce pool is made
/// ([`DmaShares::with_pool`](crate::DmaShares::with_pool)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Number of slots, 1 to [`MAX_POOL_SLOTS`]; rounded up to a power of two
    /// (the pool is one frame, and frames come in powers of two).
    pub slots: usize,
    /// Bytes per slot: a power of two, at least the table's
    /// [`granule`](crate::DmaShares::granule), so that a slot can also stand
    /// in for a partial granule of a larger share.
    pub slot_size: usize,
    /// Buffers of at most this many bytes are copied whole into a slot, at
    /// any alignment; at most `slot_size`. 0: only partial granules use the
    /// pool.
    pub threshold: usize,
}

impl PoolConfig {
    /// The default: 64 slots of 4 KiB (256 KiB per domain), threshold 4 KiB.
    /// A virtio-blk request of up to 4 KiB (header, data, status) then costs
    /// no map and no flush; 64 slots hold 21 such requests in flight.
    pub const DEFAULT: PoolConfig = PoolConfig {
        slots: 64,
        slot_size: 0x1000,
        threshold: 0x1000,
    };

    /// Slots (rounded up) and the bytes of the pool's frame, for a table of
    /// granule `granule`.
    pub(crate) fn region(&self, granule: usize) -> Result<(usize, usize), ShareError> {
        let ok = (1..=MAX_POOL_SLOTS).contains(&self.slots)
            && self.slot_size.is_power_of_two()
            && self.slot_size >= granule
            && self.threshold <= self.slot_size;
        if !ok {
            return Err(ShareError::InvalidConfig);
        }
        let slots = self.slots.next_power_of_two();
        let bytes = slots
            .checked_mul(self.slot_size)
            .ok_or(ShareError::Overflow)?;
        Ok((slots, bytes))
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a slot is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    Free,
    /// A whole small share, at offset 0.
    Share {
        buf: Span,
        direction: BufferDirection,
    },
    /// Its first granule stands in for a partial granule of a mapped share
    /// (the share's table entry knows which).
    Bounce,
    /// Being unshared.
    Releasing,
}

/// A pool: one frame, mapped read-write at one IOVA state for the pool's
/// life, and which slot of it is used for what.
pub(crate) struct Pool<'a, D: IommuDomain + ?Sized> {
    state: IovaState<'a, D, Links>,
    frames: &'a (dyn FrameAllocator + 'a),
    frame: PhysAddr,
    bytes: usize,
    slot_size: usize,
    slots: usize,
    threshold: usize,
    slots_in_use: Mutex<Slots>,
}

/// What each slot is used for, and which are free.
struct Slots {
    uses: [Use; MAX_POOL_SLOTS],
    /// Bit `i` set: slot `i` is [`Use::Free`] (kept with `uses`, so that
    /// taking a slot is one bit scan rather than a search).
    free: u128,
}

// One bit per slot.
const _: () = assert!(MAX_POOL_SLOTS <= u128::BITS as usize);

impl<'a, D: IommuDomain + ?Sized> Pool<'a, D> {
    /// A pool over `frame` (`bytes` long, from `frames`), which `state` maps
    /// at offset 0, all of it; `slots` and `bytes` from [`PoolConfig::region`].
    pub fn new(
        state: IovaState<'a, D, Links>,
        frames: &'a (dyn FrameAllocator + 'a),
        frame: PhysAddr,
        bytes: usize,
        slots: usize,
        config: &PoolConfig,
    ) -> Self {
        let slots = slots.min(MAX_POOL_SLOTS);
        let free = if slots == MAX_POOL_SLOTS {
            u128::MAX
        } else {
            (1u128 << slots) - 1
        };
        Self {
            state,
            frames,
            frame,
            bytes,
            slot_size: config.slot_size,
            slots,
            threshold: config.threshold,
            slots_in_use: Mutex::new(Slots {
                uses: [Use::Free; MAX_POOL_SLOTS],
                free,
            }),
        }
    }

    /// Whether a buffer of `len` bytes is copied whole into a slot.
    pub fn takes(&self, len: usize) -> bool {
        len <= self.threshold
    }

    /// The pool's IOVA range, `[start, end)`.
    pub fn range(&self) -> (u64, u64) {
        let start = self.state.iova().0;
        (start, start + self.bytes as u64)
    }

    /// A free slot, now marked `as_`; `None` if all are taken.
    pub fn take(&self, as_: Use) -> Option<usize> {
        let mut s = self.slots_in_use.lock();
        if s.free == 0 {
            return None;
        }
        let i = s.free.trailing_zeros() as usize;
        s.free &= !(1 << i);
        s.uses[i] = as_;
        Some(i)
    }

    /// The slot of the whole share of `buf` at `dev`, now marked releasing.
    pub fn take_share(&self, dev: Iova, buf: Span, direction: BufferDirection) -> Option<usize> {
        let (start, end) = self.range();
        if !(start..end).contains(&dev.0) || (dev.0 - start) % self.slot_size as u64 != 0 {
            return None;
        }
        let i = ((dev.0 - start) / self.slot_size as u64) as usize;
        let mut s = self.slots_in_use.lock();
        let slot = s.uses.get_mut(i)?;
        if *slot != (Use::Share { buf, direction }) {
            return None;
        }
        *slot = Use::Releasing;
        Some(i)
    }

    /// Marks slot `i` free; its bytes must have been zeroed.
    pub fn release(&self, i: usize) {
        let mut s = self.slots_in_use.lock();
        if i < self.slots {
            s.uses[i] = Use::Free;
            s.free |= 1 << i;
        }
    }

    /// Slots used as `u`.
    pub fn count(&self, u: impl Fn(&Use) -> bool) -> usize {
        self.slots_in_use.lock().uses[..self.slots]
            .iter()
            .filter(|x| u(x))
            .count()
    }

    fn offset(&self, i: usize) -> u64 {
        (i * self.slot_size) as u64
    }

    /// The physical address of slot `i`.
    pub fn pa(&self, i: usize) -> PhysAddr {
        PhysAddr(self.frame.0 + self.offset(i))
    }

    /// The device address of slot `i`.
    pub fn dev(&self, i: usize) -> Iova {
        Iova(self.state.iova().0 + self.offset(i))
    }

    /// Whether `[off, off + len)` lies in a slot.
    fn within(&self, i: usize, off: usize, len: usize) -> bool {
        i < self.slots
            && off
                .checked_add(len)
                .is_some_and(|end| end <= self.slot_size)
    }

    /// The CPU pointer to byte `off` of slot `i` (`within`).
    fn ptr(&self, i: usize, off: usize) -> *mut u8 {
        // `phys_to_virt` is valid for every byte of the allocated frame: ask
        // for the byte itself rather than offset a pointer to the frame.
        self.frames
            .phys_to_virt(PhysAddr(self.pa(i).0 + off as u64))
    }

    /// Copies `len` bytes from `src` to byte `off` of slot `i`, then makes
    /// them visible to a non-coherent device. Nothing if the range is not in
    /// the slot.
    ///
    /// # Safety
    ///
    /// `src` is valid for reads of `len` bytes and is not pool memory.
    pub unsafe fn copy_in(&self, i: usize, off: usize, src: *const u8, len: usize) {
        if !self.within(i, off, len) {
            return;
        }
        // SAFETY: the slot range is in the pool's frame, allocated while the
        // pool lives and written by the CPU only through the slot's owner;
        // `src` is readable (caller) and elsewhere.
        unsafe { ptr::copy_nonoverlapping(src, self.ptr(i, off), len) };
        self.state
            .sync_for_device(self.offset(i) + off as u64, len as u64);
    }

    /// Copies `len` bytes from byte `off` of slot `i` to `dst`, after
    /// dropping stale CPU lines (non-coherent devices). Nothing if the range
    /// is not in the slot.
    ///
    /// # Safety
    ///
    /// `dst` is valid for writes of `len` bytes and is not pool memory.
    pub unsafe fn copy_out(&self, i: usize, off: usize, dst: *mut u8, len: usize) {
        if !self.within(i, off, len) {
            return;
        }
        self.state
            .sync_for_cpu(self.offset(i) + off as u64, len as u64);
        // SAFETY: as in `copy_in`, the other way round.
        unsafe { ptr::copy_nonoverlapping(self.ptr(i, off), dst, len) };
    }

    /// Zeroes `len` bytes from byte `off` of slot `i` (what a share put
    /// there), and writes the zeros back to memory for a non-coherent device.
    pub fn zero(&self, i: usize, off: usize, len: usize) {
        if !self.within(i, off, len) {
            return;
        }
        // SAFETY: the range lies in the pool's allocated frame (`within`);
        // only the slot's owner, the caller, writes it from the CPU.
        unsafe { ptr::write_bytes(self.ptr(i, off), 0, len) };
        self.state
            .sync_for_device(self.offset(i) + off as u64, len as u64);
    }

    /// The mapping and the frame, for teardown.
    pub fn into_parts(self) -> (IovaState<'a, D, Links>, PhysAddr, usize) {
        (self.state, self.frame, self.bytes)
    }
}
