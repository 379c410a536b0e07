//! The allocator's lock: `spin`'s, or loom's under `cfg(loom)` so that
//! `tests/loom_alloc.rs` explores every interleaving of the per-CPU caches,
//! the depot and the backing allocator.

#[cfg(not(loom))]
pub(super) use spin::Mutex;

#[cfg(loom)]
pub(super) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> Mutex<T> {
    pub(super) fn new(value: T) -> Self {
        Self(loom::sync::Mutex::new(value))
    }

    pub(super) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        // Nothing panics while holding the lock (a model that did failed).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
