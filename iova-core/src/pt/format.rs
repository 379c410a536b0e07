//! What a page-table format is, as the generic engine sees it.

use crate::addr::PhysAddr;
use crate::prot::Prot;

/// A decoded page-table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Not present: the walker faults here.
    Invalid,
    /// Points to the table of the next level.
    Table(PhysAddr),
    /// Maps a page or block of the level's size.
    Leaf {
        /// Output address of the page or block.
        pa: PhysAddr,
        /// Permissions and attributes as far as the format expresses them.
        prot: Prot,
    },
}

/// A radix page-table format: how many levels, how wide each is, which levels
/// may hold blocks, and how entries are encoded.
///
/// Depths count from the root: depth 0 is the root table, depth
/// `levels() - 1` holds the smallest pages. Methods take `&self` so that a
/// format can be configured at run time from ID registers (number of levels,
/// granule, whether 1 GiB blocks exist).
///
/// The engine relies on two properties of every format, checked by its tests:
/// an entry whose value is a multiple of the granule (low bits zero) is
/// [`Invalid`](Entry::Invalid), and the all-zero entry is `Invalid`.
pub trait PtFormat: Send + Sync {
    /// Number of levels of tables.
    fn levels(&self) -> usize;
    /// log2 of the smallest page (the granule).
    fn granule_shift(&self) -> u32;
    /// Index bits of the table at `depth` (the root may differ from the rest).
    fn index_bits(&self, depth: usize) -> u32;
    /// Whether a leaf (block) may be written at `depth`. The last depth always may.
    fn block_allowed(&self, depth: usize) -> bool;
    /// Output addresses must be below `1 << oa_bits()`.
    fn oa_bits(&self) -> u32;
    /// Input addresses must be below `1 << max_ia_bits()` as well as within
    /// the levels' reach. A format says less than its levels reach where the
    /// hardware refuses the rest: x86-64 translates canonical addresses only,
    /// so its tables map the lower half. The default leaves it to the levels.
    fn max_ia_bits(&self) -> u32 {
        64
    }

    /// Whether `raw` at `depth` is present.
    fn is_present(&self, depth: usize, raw: u64) -> bool;
    /// Whether `raw` at `depth` is a present table pointer (never true at the last depth).
    fn is_table(&self, depth: usize, raw: u64) -> bool;
    /// [`is_table`](Self::is_table) for a `depth` above the last, which is
    /// all the engine's walk asks about: a format can skip its depth check
    /// here, on the hottest path of every map.
    #[inline]
    fn is_next_table(&self, depth: usize, raw: u64) -> bool {
        self.is_table(depth, raw)
    }
    /// The next-level table a table entry points to.
    fn table_pa(&self, raw: u64) -> PhysAddr;
    /// The output address of a leaf entry at `depth`.
    fn leaf_pa(&self, depth: usize, raw: u64) -> PhysAddr;
    /// The permissions of a leaf entry at `depth`.
    fn leaf_prot(&self, depth: usize, raw: u64) -> Prot;

    /// A table entry at `depth` pointing to the table at `pa`.
    fn encode_table(&self, depth: usize, pa: PhysAddr) -> u64;
    /// A leaf entry at `depth` mapping `pa` with `prot`.
    fn encode_leaf(&self, depth: usize, pa: PhysAddr, prot: Prot) -> u64;
    /// Whether the format can express `prot` (at least one of read or write,
    /// and nothing it would have to drop silently).
    fn supports(&self, prot: Prot) -> bool {
        prot.grants_access()
    }

    /// Decodes `raw` found at `depth`.
    fn decode(&self, depth: usize, raw: u64) -> Entry {
        if !self.is_present(depth, raw) {
            Entry::Invalid
        } else if self.is_table(depth, raw) {
            Entry::Table(self.table_pa(raw))
        } else {
            Entry::Leaf {
                pa: self.leaf_pa(depth, raw),
                prot: self.leaf_prot(depth, raw),
            }
        }
    }
}
