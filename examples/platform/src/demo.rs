//! Lines for `cargo xtask demo`.
//!
//! The demo shows only the serial lines of the form `demo: <key>: <text>`,
//! as an aligned `key  text` table under the test's name. Conventional keys,
//! in the order an example reaches them:
//!
//! * `iommu`: which IOMMU translates the device's DMA, or `none`;
//! * `device`: the DMA device and where it sits;
//! * `mapped`: what was mapped for the device (IOVA -> physical, size, permissions);
//! * `dma`: what the device did;
//! * `fault`: what faulted (or `none`);
//! * `result`: `OK` or `FAILED: <reason>` (printed for you on error, panic
//!   or exception).

/// Prints `demo: <key>: <text>`.
#[macro_export]
macro_rules! demo {
    ($key:literal, $($arg:tt)*) => {
        $crate::println!("demo: {}: {}", $key, format_args!($($arg)*))
    };
}
