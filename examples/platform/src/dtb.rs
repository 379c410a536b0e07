//! A minimal, read-only flattened device tree (DTB) reader.
//!
//! We parse the blob ourselves instead of using the `fdt` crate: we need only
//! "find the node with this `compatible`, read `reg`, `ranges` and a few
//! cells", which is ~300 lines, and this keeps the examples free of external
//! dependencies. Every offset is bounds-checked; a malformed blob yields a
//! [`DtbError`], never a panic.
//!
//! Format: devicetree specification v0.4, chapter 5 (header, structure block
//! of big-endian tokens, strings block).

use core::fmt;

const MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
/// Deepest node nesting we track `#address-cells` / `#size-cells` for.
const MAX_DEPTH: usize = 16;

/// Why a device tree could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DtbError {
    /// The magic number is wrong (the value found).
    BadMagic(u32),
    /// The blob is larger than the caller allowed, or a block lies outside it.
    BadSize(u32),
    /// Unsupported format version (the value found).
    BadVersion(u32),
    /// A token, name or property runs past the end of its block (at this offset).
    Truncated(usize),
    /// An unknown token (value, structure-block offset).
    BadToken(u32, usize),
    /// A property name offset points outside the strings block.
    BadString(u32),
    /// Nodes nested deeper than we track.
    TooDeep,
}

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(f, "DTB: bad magic {m:#010x}"),
            Self::BadSize(s) => write!(f, "DTB: bad size {s:#x}"),
            Self::BadVersion(v) => write!(f, "DTB: unsupported version {v}"),
            Self::Truncated(o) => write!(f, "DTB: truncated at structure offset {o:#x}"),
            Self::BadToken(t, o) => write!(f, "DTB: bad token {t:#x} at offset {o:#x}"),
            Self::BadString(o) => write!(f, "DTB: bad string offset {o:#x}"),
            Self::TooDeep => write!(f, "DTB: nodes nested deeper than {MAX_DEPTH}"),
        }
    }
}

fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a big-endian number of `cells` 32-bit cells (at most 2) from the
/// front of `bytes`, returning it and the rest.
pub fn read_cells(bytes: &[u8], cells: u32) -> Option<(u64, &[u8])> {
    if cells > 2 {
        return None;
    }
    let len = cells as usize * 4;
    let (head, rest) = bytes.split_at_checked(len)?;
    let mut value = 0u64;
    for chunk in head.chunks_exact(4) {
        value =
            (value << 32) | u64::from(u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
    }
    Some((value, rest))
}

/// A validated device tree blob.
#[derive(Debug, Clone, Copy)]
pub struct Fdt<'a> {
    blob: &'a [u8],
    structs: &'a [u8],
    strings: &'a [u8],
}

impl<'a> Fdt<'a> {
    /// Validates the header of `blob` (which may be longer than the tree).
    pub fn from_slice(blob: &'a [u8]) -> Result<Self, DtbError> {
        let field = |i: usize| be32(blob, i * 4).ok_or(DtbError::Truncated(0));
        let magic = field(0)?;
        if magic != MAGIC {
            return Err(DtbError::BadMagic(magic));
        }
        let total = field(1)?;
        let off_struct = field(2)? as usize;
        let off_strings = field(3)? as usize;
        let version = field(5)?;
        let last_compatible = field(6)?;
        let size_strings = field(8)? as usize;
        let size_struct = field(9)? as usize;
        // Version 17 added size_dt_struct; anything claiming compatibility
        // with 16 or 17 reads the same way.
        if version < 17 || last_compatible > 17 {
            return Err(DtbError::BadVersion(version));
        }
        let blob = blob.get(..total as usize).ok_or(DtbError::BadSize(total))?;
        let block = |off: usize, len: usize| {
            off.checked_add(len)
                .and_then(|end| blob.get(off..end))
                .ok_or(DtbError::BadSize(total))
        };
        Ok(Self {
            blob,
            structs: block(off_struct, size_struct)?,
            strings: block(off_strings, size_strings)?,
        })
    }

    /// Reads and validates a device tree at physical address `addr`.
    ///
    /// # Safety
    ///
    /// `addr..addr + max_size` must be identity-mapped RAM that nothing writes
    /// to for the rest of the program.
    pub unsafe fn from_addr(addr: usize, max_size: usize) -> Result<Self, DtbError> {
        // SAFETY: the caller guarantees the whole range is readable, immutable RAM.
        let blob: &'static [u8] =
            unsafe { core::slice::from_raw_parts(addr as *const u8, max_size) };
        Self::from_slice(blob)
    }

    /// Size of the tree in bytes (`totalsize`).
    pub fn total_size(&self) -> usize {
        self.blob.len()
    }

    /// Every node, depth first. Stops at the first structural error.
    pub fn nodes(&self) -> Nodes<'a> {
        Nodes {
            fdt: *self,
            offset: 0,
            depth: 0,
            cells: [(2, 1); MAX_DEPTH + 1],
            done: false,
        }
    }

    /// The first node whose `compatible` list contains `compatible`.
    pub fn find_compatible(&self, compatible: &str) -> Result<Option<Node<'a>>, DtbError> {
        for node in self.nodes() {
            let node = node?;
            if node.is_compatible(compatible) {
                return Ok(Some(node));
            }
        }
        Ok(None)
    }

    /// Every `reg` region of every node with `device_type = "memory"`, up to
    /// `out.len()`; returns how many were stored.
    pub fn memory_regions(&self, out: &mut [(u64, u64)]) -> Result<usize, DtbError> {
        let mut n = 0;
        for node in self.nodes() {
            let node = node?;
            if node.prop_str("device_type") != Some("memory") {
                continue;
            }
            for region in node.reg() {
                if let Some(slot) = out.get_mut(n) {
                    *slot = region;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn string(&self, offset: u32) -> Result<&'a str, DtbError> {
        let tail = self
            .strings
            .get(offset as usize..)
            .ok_or(DtbError::BadString(offset))?;
        let len = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or(DtbError::BadString(offset))?;
        core::str::from_utf8(&tail[..len]).map_err(|_| DtbError::BadString(offset))
    }
}

/// Iterator over the nodes of a tree (see [`Fdt::nodes`]).
#[derive(Debug, Clone)]
pub struct Nodes<'a> {
    fdt: Fdt<'a>,
    offset: usize,
    depth: usize,
    /// `(#address-cells, #size-cells)` declared by the open node at each depth
    /// (index 0 holds the defaults for the root's parent).
    cells: [(u32, u32); MAX_DEPTH + 1],
    done: bool,
}

impl<'a> Nodes<'a> {
    fn token(&self, offset: usize) -> Result<u32, DtbError> {
        be32(self.fdt.structs, offset).ok_or(DtbError::Truncated(offset))
    }

    fn step(&mut self) -> Result<Option<Node<'a>>, DtbError> {
        loop {
            let at = self.offset;
            let token = self.token(at)?;
            match token {
                FDT_BEGIN_NODE => {
                    let name_start = at + 4;
                    let rest = self
                        .fdt
                        .structs
                        .get(name_start..)
                        .ok_or(DtbError::Truncated(at))?;
                    let name_len = rest
                        .iter()
                        .position(|&b| b == 0)
                        .ok_or(DtbError::Truncated(at))?;
                    let name = core::str::from_utf8(&rest[..name_len]).unwrap_or("?");
                    let props = (name_start + name_len + 1).next_multiple_of(4);
                    if self.depth >= MAX_DEPTH {
                        return Err(DtbError::TooDeep);
                    }
                    let parent = self.cells[self.depth];
                    self.depth += 1;
                    let node = Node {
                        fdt: self.fdt,
                        name,
                        depth: self.depth,
                        props,
                        parent_address_cells: parent.0,
                        parent_size_cells: parent.1,
                    };
                    // Properties come before child nodes, so this node's own
                    // cell sizes are known before any child is visited.
                    self.cells[self.depth] = (
                        node.prop_u32("#address-cells").unwrap_or(2),
                        node.prop_u32("#size-cells").unwrap_or(1),
                    );
                    self.offset = props;
                    return Ok(Some(node));
                }
                FDT_PROP => {
                    let len = self.token(at + 4)? as usize;
                    self.offset = (at + 12)
                        .checked_add(len)
                        .ok_or(DtbError::Truncated(at))?
                        .next_multiple_of(4);
                }
                FDT_NOP => self.offset = at + 4,
                FDT_END_NODE => {
                    self.depth = self
                        .depth
                        .checked_sub(1)
                        .ok_or(DtbError::BadToken(token, at))?;
                    self.offset = at + 4;
                }
                FDT_END => return Ok(None),
                other => return Err(DtbError::BadToken(other, at)),
            }
        }
    }
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Result<Node<'a>, DtbError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.step() {
            Ok(Some(node)) => Some(Ok(node)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// One node of the tree.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    fdt: Fdt<'a>,
    name: &'a str,
    depth: usize,
    props: usize,
    parent_address_cells: u32,
    parent_size_cells: u32,
}

impl<'a> Node<'a> {
    /// The node name including the unit address, e.g. `pcie@10000000` (`""` for the root).
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// Nesting depth (the root is 1).
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// `#address-cells` of the parent, which sizes this node's `reg` addresses.
    pub fn parent_address_cells(&self) -> u32 {
        self.parent_address_cells
    }

    /// `#size-cells` of the parent, which sizes this node's `reg` lengths.
    pub fn parent_size_cells(&self) -> u32 {
        self.parent_size_cells
    }

    /// This node's properties as `(name, value)`, stopping at the first
    /// malformed one.
    pub fn props(&self) -> Props<'a> {
        Props {
            fdt: self.fdt,
            offset: self.props,
        }
    }

    /// The value of property `name`.
    pub fn prop(&self, name: &str) -> Option<&'a [u8]> {
        self.props().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// A property holding one 32-bit cell.
    pub fn prop_u32(&self, name: &str) -> Option<u32> {
        let value = self.prop(name)?;
        if value.len() != 4 {
            return None;
        }
        be32(value, 0)
    }

    /// A property holding one NUL-terminated string.
    pub fn prop_str(&self, name: &str) -> Option<&'a str> {
        let value = self.prop(name)?;
        let s = value.strip_suffix(&[0])?;
        core::str::from_utf8(s).ok()
    }

    /// Whether the `compatible` string list contains `compatible`.
    pub fn is_compatible(&self, compatible: &str) -> bool {
        self.prop("compatible").is_some_and(|list| {
            list.split(|&b| b == 0)
                .any(|entry| entry == compatible.as_bytes())
        })
    }

    /// The `(address, size)` pairs of `reg`, sized by the parent's cells.
    /// Entries with more than two cells per number are skipped (none of the
    /// nodes we read have them).
    pub fn reg(&self) -> Reg<'a> {
        Reg {
            bytes: self.prop("reg").unwrap_or(&[]),
            address_cells: self.parent_address_cells,
            size_cells: self.parent_size_cells,
        }
    }
}

/// Iterator over a node's properties.
#[derive(Debug, Clone)]
pub struct Props<'a> {
    fdt: Fdt<'a>,
    offset: usize,
}

impl<'a> Iterator for Props<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let structs = self.fdt.structs;
            match be32(structs, self.offset)? {
                FDT_NOP => self.offset += 4,
                FDT_PROP => {
                    let len = be32(structs, self.offset + 4)? as usize;
                    let name_off = be32(structs, self.offset + 8)?;
                    let start = self.offset + 12;
                    let value = structs.get(start..start.checked_add(len)?)?;
                    let name = self.fdt.string(name_off).ok()?;
                    self.offset = (start + len).next_multiple_of(4);
                    return Some((name, value));
                }
                _ => return None,
            }
        }
    }
}

/// Iterator over `reg` entries.
#[derive(Debug, Clone)]
pub struct Reg<'a> {
    bytes: &'a [u8],
    address_cells: u32,
    size_cells: u32,
}

impl Iterator for Reg<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<Self::Item> {
        let (address, rest) = read_cells(self.bytes, self.address_cells)?;
        let (size, rest) = read_cells(rest, self.size_cells)?;
        self.bytes = rest;
        Some((address, size))
    }
}
