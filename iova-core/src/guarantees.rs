//! Misuse the type system rules out.
//!
//! Linux's two-step API trusts its callers with a plain struct: a freed state
//! can be linked again, an IOVA can be freed twice, a mapping can outlive its
//! domain. Here those are compile errors. Each example below is checked by
//! `cargo test --doc`: the misuse must fail to compile with the error code
//! shown, and the correct use next to it must compile.
//!
//! What cannot be expressed in types is checked at run time and returns a
//! typed error that changes nothing (overlapping links, unlinking what was
//! never linked, freeing while linked); and an IOVA range returns to the
//! allocator only after the flush that removed its translations completed,
//! because [`IovaState::free`](crate::IovaState::free) and
//! [`destroy`](crate::IovaState::destroy) flush first and give the state back
//! on failure.
//!
//! # A state cannot be used after `free` or `destroy`
//!
//! Both take the state by value:
//!
//! ```compile_fail,E0382
//! # use iova_core::fakes::fake_domain;
//! # use iova_core::formats::lpae::LpaeS1;
//! # use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
//! # use iova_core::{DmaMapper, Iova, IovaRange, PhysAddr, Prot};
//! # let (domain, _frames) = fake_domain(LpaeS1::va48());
//! # let aperture = IovaRange::new(Iova(0x1000_0000), 0x100_0000).unwrap();
//! # let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 8, 1).unwrap();
//! # let cpu = || 0;
//! # let mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();
//! let mut state = mapper.try_alloc(0x1000, 0x1000).unwrap();
//! state.free().unwrap();
//! state.link(0, PhysAddr(0x8000_0000), 0x1000, Prot::RW).unwrap(); // use after free
//! ```
//!
//! ```
//! # use iova_core::fakes::fake_domain;
//! # use iova_core::formats::lpae::LpaeS1;
//! # use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
//! # use iova_core::{DmaMapper, Iova, IovaRange, PhysAddr, Prot};
//! # let (domain, _frames) = fake_domain(LpaeS1::va48());
//! # let aperture = IovaRange::new(Iova(0x1000_0000), 0x100_0000).unwrap();
//! # let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 8, 1).unwrap();
//! # let cpu = || 0;
//! # let mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();
//! let mut state = mapper.try_alloc(0x1000, 0x1000).unwrap();
//! state.link(0, PhysAddr(0x8000_0000), 0x1000, Prot::RW).unwrap();
//! state.sync().unwrap();
//! state.destroy().unwrap(); // unlink, flush, free: the state is gone
//! ```
//!
//! # An IOVA range cannot be freed twice
//!
//! [`IovaAlloc`](crate::IovaAlloc) is neither `Clone` nor `Copy`, and
//! [`IovaAllocator::free`](crate::IovaAllocator::free) consumes it:
//!
//! ```compile_fail,E0382
//! # use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
//! # use iova_core::{Iova, IovaRange};
//! # let aperture = IovaRange::new(Iova(0x1000_0000), 0x100_0000).unwrap();
//! # let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 8, 1).unwrap();
//! let a = iovas.alloc(0, 0x1000, 0x1000).unwrap();
//! iovas.free(0, a).unwrap();
//! iovas.free(0, a).unwrap(); // double free
//! ```
//!
//! # A mapping or a state cannot outlive its domain or allocator
//!
//! They borrow the domain and the allocator through the [`DmaMapper`](crate::DmaMapper):
//!
//! ```compile_fail,E0505
//! # use iova_core::fakes::fake_domain;
//! # use iova_core::formats::lpae::LpaeS1;
//! # use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
//! # use iova_core::{DmaMapper, Iova, IovaRange, PhysAddr, Prot};
//! let (domain, _frames) = fake_domain(LpaeS1::va48());
//! # let aperture = IovaRange::new(Iova(0x1000_0000), 0x100_0000).unwrap();
//! # let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 8, 1).unwrap();
//! # let cpu = || 0;
//! let mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();
//! let mapping = mapper.map(PhysAddr(0x8000_0000), 0x1000, Prot::RW).unwrap();
//! drop(domain); // the tables would go while the device may still use them
//! let _ = mapping.addr();
//! ```
//!
//! # A gather cannot be dropped silently
//!
//! [`IotlbGather`](crate::IotlbGather) is `#[must_use]`: with warnings denied,
//! as in our CI, a gather that is never flushed does not build:
//!
//! ```compile_fail
//! #![deny(unused_must_use)]
//! # use iova_core::IotlbGather;
//! IotlbGather::new(); // the invalidations it would record are lost
//! ```
//!
//! ```
//! #![deny(unused_must_use)]
//! # use iova_core::fakes::fake_domain;
//! # use iova_core::formats::lpae::LpaeS1;
//! # use iova_core::{IommuDomain, IotlbGather, Iova};
//! # let (domain, _frames) = fake_domain(LpaeS1::va48());
//! let mut gather = IotlbGather::new();
//! let _ = domain.unmap(Iova(0), 0x1000, &mut gather);
//! domain.flush(&mut gather).unwrap();
//! ```
