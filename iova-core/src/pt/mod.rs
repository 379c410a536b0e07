//! Page tables: the format trait and the generic radix engine.

mod format;
mod table;

pub use format::{Entry, PtFormat};
pub use table::{MAX_LEVELS, PageTable, Translation};
