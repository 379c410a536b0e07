//! The stream table: linear, or two-level with level-2 tables allocated on
//! first use. Every entry starts invalid (V = 0), so a stream nobody
//! attached is terminated and reported (C_BAD_STE, or C_BAD_STREAMID for
//! a two-level range with no level-2 table).

use iova_core::FrameAllocator;

use crate::cache::SmmuCache;
use crate::error::SmmuError;
use crate::queue::DmaBuf;
use crate::regs::strtab;
use crate::ste::{L1_L2PTR_MASK, L1_SPAN_MASK, STE_BYTES, Ste, l1_desc};

/// Which stream-table format the driver builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StreamTableFormat {
    /// One array of STEs for every StreamID.
    Linear,
    /// A level-1 array of descriptors, each pointing at a level-2 array of
    /// `1 << split` STEs, allocated when a StreamID in its range is first used.
    TwoLevel {
        /// log2 of the STEs per level-2 table (6, 8 or 10).
        split: u32,
    },
}

pub(crate) enum Table {
    Linear(DmaBuf),
    TwoLevel {
        l1: DmaBuf,
        split: u32,
        /// Level-2 tables allocated (for the report and for freeing).
        l2_count: usize,
    },
}

pub(crate) struct StreamTable {
    pub(crate) table: Table,
    cache: SmmuCache,
    /// StreamIDs covered: `1 << log2`.
    pub(crate) log2: u32,
}

/// Where one STE lives.
pub(crate) struct Slot<'a> {
    buf: &'a DmaBuf,
    first: usize,
}

impl Slot<'_> {
    pub(crate) fn read(&self) -> Ste {
        let mut s = Ste::default();
        for (i, w) in s.0.iter_mut().enumerate() {
            *w = self.buf.read(self.first + i);
        }
        s
    }
    pub(crate) fn write_word(&self, i: usize, v: u64) {
        self.buf.write(self.first + i, v);
    }
    /// Cleans words `[i, i + n)` of the STE for a non-coherent SMMU.
    pub(crate) fn clean(&self, cache: &SmmuCache, i: usize, n: usize) {
        self.buf.clean(cache, self.first + i, n);
    }
}

/// A level-2 table seen through its level-1 descriptor.
fn l2_view<A: FrameAllocator>(frames: &A, desc: u64, split: u32) -> DmaBuf {
    DmaBuf::view(
        frames,
        iova_core::PhysAddr(desc & L1_L2PTR_MASK),
        STE_BYTES << split,
    )
}

impl StreamTable {
    pub(crate) fn new<A: FrameAllocator>(
        frames: &A,
        format: StreamTableFormat,
        log2: u32,
        cache: SmmuCache,
    ) -> Result<Self, SmmuError> {
        let table = match format {
            StreamTableFormat::Linear => {
                Table::Linear(DmaBuf::alloc(frames, STE_BYTES << log2, &cache)?)
            }
            StreamTableFormat::TwoLevel { split } => {
                let split = split.min(log2);
                Table::TwoLevel {
                    l1: DmaBuf::alloc(frames, 8 << (log2 - split), &cache)?,
                    split,
                    l2_count: 0,
                }
            }
        };
        Ok(Self { table, log2, cache })
    }

    /// STRTAB_BASE value.
    pub(crate) fn base_reg(&self) -> u64 {
        let pa = match &self.table {
            Table::Linear(b) => b.pa,
            Table::TwoLevel { l1, .. } => l1.pa,
        };
        (pa.0 & strtab::BASE_ADDR_MASK) | strtab::BASE_RA
    }

    /// STRTAB_BASE_CFG value.
    pub(crate) fn cfg_reg(&self) -> u32 {
        match &self.table {
            Table::Linear(_) => self.log2,
            Table::TwoLevel { split, .. } => {
                1 << strtab::CFG_FMT_SHIFT | split << strtab::CFG_SPLIT_SHIFT | self.log2
            }
        }
    }

    /// Level-2 tables allocated so far (0 for a linear table).
    pub(crate) fn l2_tables(&self) -> usize {
        match &self.table {
            Table::Linear(_) => 0,
            Table::TwoLevel { l2_count, .. } => *l2_count,
        }
    }

    /// Runs `f` on the STE of `sid`. With `alloc`, a missing level-2 table is
    /// allocated (zeroed: all its STEs invalid) and linked; the caller's
    /// CFGI_STE (Leaf = 0) then invalidates any cached level-1 descriptor.
    /// Without, a missing level-2 table yields `None`.
    pub(crate) fn with_slot<A: FrameAllocator, R>(
        &mut self,
        frames: &A,
        sid: u32,
        alloc: bool,
        f: impl FnOnce(&Slot<'_>) -> R,
    ) -> Result<Option<R>, SmmuError> {
        if self.log2 < 32 && sid >> self.log2 != 0 {
            return Err(SmmuError::StreamIdOutOfRange(sid));
        }
        match &mut self.table {
            Table::Linear(b) => Ok(Some(f(&Slot {
                buf: b,
                first: sid as usize * 8,
            }))),
            Table::TwoLevel {
                l1,
                split,
                l2_count,
            } => {
                let split = *split;
                let i = (sid >> split) as usize;
                let mut desc = l1.read(i);
                if desc & L1_SPAN_MASK == 0 {
                    if !alloc {
                        return Ok(None);
                    }
                    let l2 = DmaBuf::alloc(frames, STE_BYTES << split, &self.cache)?;
                    desc = l1_desc(l2.pa.0, split);
                    // From now on the descriptor owns the table.
                    crate::barrier::publish();
                    l1.write(i, desc);
                    l1.clean(&self.cache, i, 1);
                    *l2_count += 1;
                }
                let l2 = l2_view(frames, desc, split);
                let first = (sid as usize & ((1 << split) - 1)) * 8;
                Ok(Some(f(&Slot { buf: &l2, first })))
            }
        }
    }

    /// Returns every table to `frames`.
    ///
    /// # Safety
    ///
    /// The SMMU no longer reads the stream table.
    pub(crate) unsafe fn free<A: FrameAllocator>(self, frames: &A) {
        match self.table {
            // SAFETY: the caller's promise.
            Table::Linear(b) => unsafe { b.free(frames) },
            Table::TwoLevel { l1, split, .. } => {
                for i in 0..l1.words() {
                    let d = l1.read(i);
                    if d & L1_SPAN_MASK != 0 {
                        // SAFETY: allocated by `with_slot` with this size; unreachable now.
                        unsafe { l2_view(frames, d, split).free(frames) };
                    }
                }
                // SAFETY: the caller's promise.
                unsafe { l1.free(frames) };
            }
        }
    }
}
