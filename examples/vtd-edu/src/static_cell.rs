//! [`StaticCell`]: a `static` that is filled once at run time and then
//! lent out as `&'static mut`, for what must live as long as the
//! `'static` `DmaShares` table but is built from values `main` finds (the
//! IOVA allocator's slot arrays are borrowed mutably by the allocator).
//! There is no heap to leak a box from.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};

/// Storage for one `T`, filled at most once.
pub struct StaticCell<T> {
    taken: AtomicBool,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is reached only through the one `&'static mut T` that
// `put` returns (once: `taken` guards it), so sharing the cell shares
// nothing; moving that reference to another thread moves the `T` (Send).
unsafe impl<T: Send> Sync for StaticCell<T> {}

impl<T> StaticCell<T> {
    /// An empty cell.
    pub const fn new() -> Self {
        Self {
            taken: AtomicBool::new(false),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Stores `value` and lends it out for good; `None` (and `value`
    /// dropped) if the cell was filled before.
    // The one `&mut` there ever is comes from a shared `&'static self`:
    // that is the point of the cell, and `taken` makes it unique.
    #[allow(clippy::mut_from_ref)]
    pub fn put(&'static self, value: T) -> Option<&'static mut T> {
        // Single CPU with interrupts masked: a load and a store (the
        // platform avoids read-modify-write atomics throughout).
        if self.taken.load(Ordering::Acquire) {
            return None;
        }
        self.taken.store(true, Ordering::Release);
        // SAFETY: first and only `put`: nobody else refers to the storage,
        // and the reference returned is the only one ever made.
        Some(unsafe { (*self.value.get()).write(value) })
    }
}
