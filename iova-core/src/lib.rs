#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod addr;
pub mod iova_alloc;

pub use addr::{Iova, IovaRange, Overflow, PhysAddr};
