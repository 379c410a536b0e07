//! PCI(e) configuration space over ECAM, enumeration, BAR sizing and
//! assignment.
//!
//! * aarch64 `virt`: the ECAM region and the 32-bit memory window come from the
//!   device tree (`compatible = "pci-host-ecam-generic"`). No firmware runs,
//!   so BARs are unassigned and the command register is 0: [`PciHost::assign_bar`]
//!   allocates from the window.
//! * x86_64 `q35`: SeaBIOS has enabled MMCONFIG and assigned BARs; the ECAM base
//!   is read from the host bridge's PCIEXBAR register (through the legacy
//!   0xCF8/0xCFC mechanism), not hard-coded. There is no window to allocate
//!   from, so an unassigned BAR is an error. SeaBIOS leaves Bus-Master off.
//!
//! Only bus numbers already programmed are scanned; bridges are not
//! configured (QEMU's `virt` needs no bridge for the devices we use).

use core::fmt;

use crate::mmio;

/// Command register bit: respond to I/O space accesses.
pub const CMD_IO: u16 = 1 << 0;
/// Command register bit: respond to memory space accesses.
pub const CMD_MEMORY: u16 = 1 << 1;
/// Command register bit: Bus-Master Enable. Without it a device's DMA is
/// dropped (QEMU silently discards it).
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// Command register bit: INTx disable.
pub const CMD_INTX_DISABLE: u16 = 1 << 10;

/// Config-space offsets of the type-0 header fields we use.
pub mod reg {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command (16 bits).
    pub const COMMAND: u16 = 0x04;
    /// Status (16 bits).
    pub const STATUS: u16 = 0x06;
    /// Revision ID (8) and class code (24).
    pub const CLASS_REV: u16 = 0x08;
    /// Header type (8 bits; bit 7 = multi-function).
    pub const HEADER_TYPE: u16 = 0x0e;
    /// BAR 0 (BARs 1-5 follow every 4 bytes).
    pub const BAR0: u16 = 0x10;
}

/// Bus / device / function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0-31).
    pub device: u8,
    /// Function number (0-7).
    pub function: u8,
}

impl Bdf {
    /// A BDF; `None` if device > 31 or function > 7.
    pub const fn new(bus: u8, device: u8, function: u8) -> Option<Self> {
        if device < 32 && function < 8 {
            Some(Self {
                bus,
                device,
                function,
            })
        } else {
            None
        }
    }

    /// The 16-bit requester ID `(bus << 8) | (device << 3) | function`: the
    /// SMMUv3 StreamID / VT-d source-id / virtio-iommu endpoint ID.
    pub const fn rid(self) -> u16 {
        ((self.bus as u16) << 8) | ((self.device as u16) << 3) | self.function as u16
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// Why a PCI operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PciError {
    /// No ECAM host bridge was found (aarch64: no `pci-host-ecam-generic` node).
    NoHost,
    /// The device tree could not be read.
    Dtb(crate::dtb::DtbError),
    /// The host bridge description is unusable (what is wrong).
    BadHost(&'static str),
    /// The x86 host bridge is not the q35 one (vendor:device found).
    UnknownHostBridge(u16, u16),
    /// MMCONFIG (PCIEXBAR) is disabled.
    MmconfigDisabled,
    /// No function at this BDF.
    NoFunction(Bdf),
    /// The BDF's bus is outside the ECAM region.
    BusOutOfRange(Bdf),
    /// BAR index > 5, or a 64-bit BAR starting at index 5.
    BadBarIndex(u8),
    /// The BAR is not implemented (reads back 0 when sized).
    BarNotImplemented(Bdf, u8),
    /// I/O BARs are not supported by [`PciHost::assign_bar`].
    IoBar(Bdf, u8),
    /// The BAR is unassigned and there is no window to assign it from.
    NoWindow(Bdf, u8),
    /// The window has no room for a BAR of this size.
    WindowFull {
        /// The BAR's size.
        size: u64,
    },
    /// The BAR did not read back what was written (written, read).
    BarReadback(u64, u64),
    /// The BAR's address is not reachable by the CPU here (above 4 GiB on x86_64).
    BarUnreachable(u64),
}

impl fmt::Display for PciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHost => f.write_str("no PCI ECAM host bridge found"),
            Self::Dtb(e) => write!(f, "{e}"),
            Self::BadHost(why) => write!(f, "unusable PCI host bridge: {why}"),
            Self::UnknownHostBridge(v, d) => write!(f, "unknown host bridge {v:04x}:{d:04x}"),
            Self::MmconfigDisabled => f.write_str("MMCONFIG (PCIEXBAR) is disabled"),
            Self::NoFunction(b) => write!(f, "no PCI function at {b}"),
            Self::BusOutOfRange(b) => write!(f, "{b}: bus outside the ECAM region"),
            Self::BadBarIndex(i) => write!(f, "bad BAR index {i}"),
            Self::BarNotImplemented(b, i) => write!(f, "{b} BAR{i} is not implemented"),
            Self::IoBar(b, i) => write!(f, "{b} BAR{i} is an I/O BAR (unsupported)"),
            Self::NoWindow(b, i) => {
                write!(f, "{b} BAR{i} is unassigned and there is no MMIO window")
            }
            Self::WindowFull { size } => {
                write!(f, "MMIO window has no room for a {size:#x}-byte BAR")
            }
            Self::BarReadback(w, r) => write!(f, "BAR wrote {w:#x}, read back {r:#x}"),
            Self::BarUnreachable(a) => write!(f, "BAR address {a:#x} is not mapped for the CPU"),
        }
    }
}

impl From<crate::dtb::DtbError> for PciError {
    fn from(e: crate::dtb::DtbError) -> Self {
        Self::Dtb(e)
    }
}

/// An ECAM (memory-mapped configuration) region: 4 KiB of config space per
/// function, 1 MiB per bus.
#[derive(Debug, Clone, Copy)]
pub struct Ecam {
    base: usize,
    bus_start: u8,
    bus_end: u8,
}

impl Ecam {
    /// An ECAM region whose bus `bus_start` is at CPU address `base`.
    ///
    /// # Safety
    ///
    /// `base` must be the identity-mapped address of a real ECAM region
    /// covering buses `bus_start..=bus_end`, and nothing else may reprogram
    /// the functions behind it in a way that breaks our use of them.
    pub unsafe fn new(base: usize, bus_start: u8, bus_end: u8) -> Self {
        Self {
            base,
            bus_start,
            bus_end,
        }
    }

    /// CPU address of the region (bus `bus_start`).
    pub fn base(&self) -> usize {
        self.base
    }

    /// The bus numbers covered.
    pub fn buses(&self) -> core::ops::RangeInclusive<u8> {
        self.bus_start..=self.bus_end
    }

    fn addr(&self, bdf: Bdf, offset: u16, width: u16) -> Option<usize> {
        if bdf.bus < self.bus_start
            || bdf.bus > self.bus_end
            || offset >= 4096
            || !offset.is_multiple_of(width)
        {
            return None;
        }
        let index = (usize::from(bdf.bus - self.bus_start) << 8)
            | (usize::from(bdf.device) << 3)
            | usize::from(bdf.function);
        Some(self.base + (index << 12) + usize::from(offset))
    }

    /// Reads a 32-bit config register; all-ones if out of range or misaligned
    /// (what a read of an absent function returns).
    pub fn read32(&self, bdf: Bdf, offset: u16) -> u32 {
        match self.addr(bdf, offset, 4) {
            // SAFETY: `addr` is inside the ECAM region (checked by `addr`, and
            // `Ecam::new`'s contract) and 4-byte aligned; config reads have no
            // side effects on the functions we scan.
            Some(a) => unsafe { mmio::read32(a) },
            None => u32::MAX,
        }
    }

    /// Reads a 16-bit config register; all-ones if out of range or misaligned.
    pub fn read16(&self, bdf: Bdf, offset: u16) -> u16 {
        match self.addr(bdf, offset, 2) {
            // SAFETY: as in `read32`, 2-byte aligned.
            Some(a) => unsafe { mmio::read16(a) },
            None => u16::MAX,
        }
    }

    /// Reads an 8-bit config register; all-ones if out of range.
    pub fn read8(&self, bdf: Bdf, offset: u16) -> u8 {
        match self.addr(bdf, offset, 1) {
            // SAFETY: as in `read32`.
            Some(a) => unsafe { mmio::read8(a) },
            None => u8::MAX,
        }
    }

    /// Writes a 32-bit config register (ignored if out of range or misaligned).
    ///
    /// # Safety
    ///
    /// The write must not make the device do anything unsound (e.g. enabling
    /// Bus-Master with DMA addresses pointing at memory Rust uses, or moving
    /// a BAR on top of memory).
    pub unsafe fn write32(&self, bdf: Bdf, offset: u16, value: u32) {
        if let Some(a) = self.addr(bdf, offset, 4) {
            // SAFETY: in-range, aligned ECAM address; the caller vouches for the
            // effect of the write.
            unsafe { mmio::write32(a, value) }
        }
    }

    /// Writes a 16-bit config register (ignored if out of range or misaligned).
    ///
    /// # Safety
    ///
    /// As for [`Ecam::write32`].
    pub unsafe fn write16(&self, bdf: Bdf, offset: u16, value: u16) {
        if let Some(a) = self.addr(bdf, offset, 2) {
            // SAFETY: in-range, aligned ECAM address; the caller vouches for the
            // effect of the write.
            unsafe { mmio::write16(a, value) }
        }
    }

    /// Identity of the function at `bdf`, if one is present.
    pub fn function(&self, bdf: Bdf) -> Option<Function> {
        let id = self.read32(bdf, reg::VENDOR_ID);
        let vendor = id as u16;
        if vendor == 0xffff || vendor == 0 {
            return None;
        }
        let class_rev = self.read32(bdf, reg::CLASS_REV);
        Some(Function {
            bdf,
            vendor,
            device: (id >> 16) as u16,
            class: class_rev >> 8,
            revision: class_rev as u8,
            header_type: self.read8(bdf, reg::HEADER_TYPE),
        })
    }

    /// Every function present, in BDF order.
    pub fn functions(&self) -> Functions {
        Functions {
            ecam: *self,
            next: Some(Bdf {
                bus: self.bus_start,
                device: 0,
                function: 0,
            }),
        }
    }
}

/// A function found by enumeration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// Where it is.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code: base class, subclass, programming interface (24 bits).
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Header type (bit 7: multi-function device).
    pub header_type: u8,
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} class {:06x} rev {:02x} header {:02x}",
            self.bdf, self.vendor, self.device, self.class, self.revision, self.header_type
        )
    }
}

/// Iterator over present functions (see [`Ecam::functions`]).
#[derive(Debug, Clone)]
pub struct Functions {
    ecam: Ecam,
    next: Option<Bdf>,
}

impl Functions {
    fn advance(&mut self, bdf: Bdf, whole_device: bool) {
        self.next = if !whole_device && bdf.function < 7 {
            Some(Bdf {
                function: bdf.function + 1,
                ..bdf
            })
        } else if bdf.device < 31 {
            Some(Bdf {
                device: bdf.device + 1,
                function: 0,
                ..bdf
            })
        } else if bdf.bus < self.ecam.bus_end {
            Some(Bdf {
                bus: bdf.bus + 1,
                device: 0,
                function: 0,
            })
        } else {
            None
        };
    }
}

impl Iterator for Functions {
    type Item = Function;

    fn next(&mut self) -> Option<Function> {
        while let Some(bdf) = self.next {
            match self.ecam.function(bdf) {
                Some(f) => {
                    // Functions 1-7 exist only on multi-function devices.
                    let single = bdf.function == 0 && f.header_type & 0x80 == 0;
                    self.advance(bdf, single);
                    return Some(f);
                }
                None => {
                    // No function 0 means no device.
                    self.advance(bdf, bdf.function == 0);
                }
            }
        }
        None
    }
}

/// What kind of BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Mem32,
    /// 64-bit memory BAR (uses this slot and the next).
    Mem64,
    /// I/O-space BAR.
    Io,
}

/// A sized BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// BAR index (0-5).
    pub index: u8,
    /// Memory (32/64-bit) or I/O.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Address on the PCI bus (0 = unassigned).
    pub pci_addr: u64,
    /// Address the CPU uses to reach it (equal to `pci_addr` unless the host
    /// bridge translates).
    pub cpu_addr: u64,
}

/// A bus-address window BARs are assigned from (the host bridge's 32-bit
/// non-prefetchable memory range on aarch64 `virt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// CPU address of the start.
    pub cpu_base: u64,
    /// PCI bus address of the start.
    pub pci_base: u64,
    /// Size in bytes.
    pub size: u64,
    /// Bytes handed out so far (bump allocation).
    pub used: u64,
}

impl Window {
    fn contains_pci(&self, addr: u64) -> bool {
        addr >= self.pci_base && addr - self.pci_base < self.size
    }

    fn alloc(&mut self, size: u64) -> Result<u64, PciError> {
        let full = PciError::WindowFull { size };
        // BARs are naturally aligned to their size.
        let start = self
            .pci_base
            .checked_add(self.used)
            .and_then(|a| a.checked_next_multiple_of(size))
            .ok_or(full)?;
        let end = start.checked_add(size).ok_or(full)?;
        let limit = self.pci_base.checked_add(self.size).ok_or(full)?;
        if end > limit {
            return Err(full);
        }
        self.used = end - self.pci_base;
        Ok(start)
    }
}

/// A PCI host bridge: its ECAM region and, where no firmware assigned BARs,
/// the window to assign them from.
#[derive(Debug, Clone)]
pub struct PciHost {
    ecam: Ecam,
    mem32: Option<Window>,
}

impl PciHost {
    /// A host from its parts.
    pub fn new(ecam: Ecam, mem32: Option<Window>) -> Self {
        Self { ecam, mem32 }
    }

    /// The configuration space.
    pub fn ecam(&self) -> &Ecam {
        &self.ecam
    }

    /// The 32-bit memory window, if BARs are to be assigned from one.
    pub fn mem32_window(&self) -> Option<&Window> {
        self.mem32.as_ref()
    }

    /// Every function present.
    pub fn functions(&self) -> Functions {
        self.ecam.functions()
    }

    /// The first function with this vendor and device ID.
    pub fn find(&self, vendor: u16, device: u16) -> Option<Function> {
        self.functions()
            .find(|f| f.vendor == vendor && f.device == device)
    }

    fn present(&self, bdf: Bdf) -> Result<(), PciError> {
        if !self.ecam.buses().contains(&bdf.bus) {
            return Err(PciError::BusOutOfRange(bdf));
        }
        self.ecam
            .function(bdf)
            .map(|_| ())
            .ok_or(PciError::NoFunction(bdf))
    }

    /// Reads the command register.
    pub fn command(&self, bdf: Bdf) -> u16 {
        self.ecam.read16(bdf, reg::COMMAND)
    }

    /// Sets `bits` in the command register (e.g. [`CMD_MEMORY`] | [`CMD_BUS_MASTER`])
    /// and returns the new value read back.
    ///
    /// # Safety
    ///
    /// Enabling Bus-Master lets the device DMA anywhere its DMA address
    /// registers point (with no IOMMU: all of RAM); the caller must make sure
    /// those are programmed soundly.
    pub unsafe fn enable(&self, bdf: Bdf, bits: u16) -> Result<u16, PciError> {
        self.present(bdf)?;
        let cmd = self.command(bdf);
        // SAFETY: writing the command register of a present function; the
        // caller vouches for what Bus-Master allows.
        unsafe { self.ecam.write16(bdf, reg::COMMAND, cmd | bits) };
        Ok(self.command(bdf))
    }

    fn cpu_addr(&self, pci_addr: u64) -> u64 {
        match &self.mem32 {
            Some(w) if w.contains_pci(pci_addr) => pci_addr - w.pci_base + w.cpu_base,
            _ => pci_addr,
        }
    }

    /// Sizes BAR `index` of `bdf` (decoding is turned off while sizing and
    /// restored afterwards). `Err(BarNotImplemented)` if the BAR is absent.
    pub fn bar(&self, bdf: Bdf, index: u8) -> Result<Bar, PciError> {
        if index > 5 {
            return Err(PciError::BadBarIndex(index));
        }
        self.present(bdf)?;
        let offset = reg::BAR0 + 4 * u16::from(index);
        let cmd = self.command(bdf);
        let ecam = &self.ecam;
        // SAFETY: (this and the writes below) decoding is disabled while the BAR holds
        // all-ones, so the device claims no addresses; the original values are
        // written back before decoding is restored.
        unsafe { ecam.write16(bdf, reg::COMMAND, cmd & !(CMD_IO | CMD_MEMORY)) };
        let low = ecam.read32(bdf, offset);
        let kind = if low & 1 == 1 {
            BarKind::Io
        } else if (low >> 1) & 3 == 2 {
            BarKind::Mem64
        } else {
            BarKind::Mem32
        };
        if kind == BarKind::Mem64 && index == 5 {
            // SAFETY: restores the original command value.
            unsafe { ecam.write16(bdf, reg::COMMAND, cmd) };
            return Err(PciError::BadBarIndex(index));
        }
        // SAFETY: see above.
        unsafe { ecam.write32(bdf, offset, u32::MAX) };
        let low_mask = ecam.read32(bdf, offset);
        // SAFETY: see above.
        unsafe { ecam.write32(bdf, offset, low) };
        let (high, high_mask) = if kind == BarKind::Mem64 {
            let high = ecam.read32(bdf, offset + 4);
            // SAFETY: see above.
            unsafe { ecam.write32(bdf, offset + 4, u32::MAX) };
            let mask = ecam.read32(bdf, offset + 4);
            // SAFETY: see above.
            unsafe { ecam.write32(bdf, offset + 4, high) };
            (high, mask)
        } else {
            (0, 0)
        };
        // SAFETY: restores the original command value.
        unsafe { ecam.write16(bdf, reg::COMMAND, cmd) };

        let (addr, mask) = match kind {
            BarKind::Io => (
                u64::from(low & !3),
                u64::from(low_mask & !3) | 0xffff_ffff_ffff_0000,
            ),
            BarKind::Mem32 => (
                u64::from(low & !0xf),
                u64::from(low_mask & !0xf) | 0xffff_ffff_0000_0000,
            ),
            BarKind::Mem64 => (
                (u64::from(high) << 32) | u64::from(low & !0xf),
                (u64::from(high_mask) << 32) | u64::from(low_mask & !0xf),
            ),
        };
        let size = (!mask).wrapping_add(1);
        if mask == 0
            || size == 0
            || !size.is_power_of_two()
            || (kind != BarKind::Io && low_mask & !0xf == 0)
        {
            return Err(PciError::BarNotImplemented(bdf, index));
        }
        Ok(Bar {
            index,
            kind,
            prefetchable: kind != BarKind::Io && low & 0x8 != 0,
            size,
            pci_addr: addr,
            cpu_addr: self.cpu_addr(addr),
        })
    }

    /// Sizes BAR `index` and, if no firmware assigned it, assigns it from the
    /// 32-bit window. Does not enable decoding: follow with [`PciHost::enable`].
    ///
    /// # Safety
    ///
    /// Moving a BAR changes which addresses the device claims: the caller must
    /// make sure nothing relies on the old location and that the window is
    /// not used by anything else.
    pub unsafe fn assign_bar(&mut self, bdf: Bdf, index: u8) -> Result<Bar, PciError> {
        let mut bar = self.bar(bdf, index)?;
        if bar.kind == BarKind::Io {
            return Err(PciError::IoBar(bdf, index));
        }
        if bar.pci_addr == 0 {
            let window = self.mem32.as_mut().ok_or(PciError::NoWindow(bdf, index))?;
            let addr = window.alloc(bar.size)?;
            let offset = reg::BAR0 + 4 * u16::from(index);
            let cmd = self.command(bdf);
            // SAFETY: decoding is off while the BAR is rewritten; the new address
            // comes from the window reserved for BARs, and the caller vouches for
            // the rest.
            unsafe {
                self.ecam
                    .write16(bdf, reg::COMMAND, cmd & !(CMD_IO | CMD_MEMORY));
                self.ecam.write32(bdf, offset, addr as u32);
                if bar.kind == BarKind::Mem64 {
                    self.ecam.write32(bdf, offset + 4, (addr >> 32) as u32);
                }
                self.ecam.write16(bdf, reg::COMMAND, cmd);
            }
            bar = self.bar(bdf, index)?;
            if bar.pci_addr != addr {
                return Err(PciError::BarReadback(addr, bar.pci_addr));
            }
        }
        if !crate::arch::cpu_can_reach(bar.cpu_addr, bar.size) {
            return Err(PciError::BarUnreachable(bar.cpu_addr));
        }
        Ok(bar)
    }
}

/// Finds the PCI host bridge of this machine (see the module docs).
pub fn discover(boot: &crate::BootInfo) -> Result<PciHost, PciError> {
    crate::arch::discover_pci(boot)
}

/// Builds a [`PciHost`] from a device tree's `pci-host-ecam-generic` node.
/// Used on aarch64 `virt`; exposed for any DT-described platform.
pub fn from_device_tree(fdt: &crate::dtb::Fdt<'_>) -> Result<PciHost, PciError> {
    use crate::dtb::read_cells;

    let node = fdt
        .find_compatible("pci-host-ecam-generic")?
        .ok_or(PciError::NoHost)?;
    let (base, size) = node.reg().next().ok_or(PciError::BadHost("no reg"))?;
    let (bus_start, mut bus_end) = match node.prop("bus-range") {
        Some(range) => {
            let (start, rest) = read_cells(range, 1).ok_or(PciError::BadHost("bad bus-range"))?;
            let (end, _) = read_cells(rest, 1).ok_or(PciError::BadHost("bad bus-range"))?;
            (start, end)
        }
        None => (0, 255),
    };
    if bus_start > bus_end || bus_end > 255 {
        return Err(PciError::BadHost("bad bus-range"));
    }
    // The region must cover the bus range: 1 MiB per bus.
    let buses_in_reg = size >> 20;
    if buses_in_reg == 0 || base % (1 << 20) != 0 {
        return Err(PciError::BadHost("ECAM reg too small or misaligned"));
    }
    bus_end = bus_end.min(bus_start + buses_in_reg - 1);
    if !crate::arch::cpu_can_reach(base, (bus_end - bus_start + 1) << 20) {
        return Err(PciError::BadHost("ECAM not reachable by the CPU"));
    }

    // ranges: (child PCI address: 3 cells, parent CPU address, size: node's #size-cells).
    let child_cells = node.prop_u32("#address-cells").unwrap_or(3);
    let size_cells = node.prop_u32("#size-cells").unwrap_or(2);
    if child_cells != 3 {
        return Err(PciError::BadHost("#address-cells is not 3"));
    }
    let mut mem32 = None;
    let mut ranges = node.prop("ranges").unwrap_or(&[]);
    while !ranges.is_empty() {
        let bad = PciError::BadHost("bad ranges");
        let (hi, rest) = read_cells(ranges, 1).ok_or(bad)?;
        let (pci, rest) = read_cells(rest, 2).ok_or(bad)?;
        let (cpu, rest) = read_cells(rest, node.parent_address_cells()).ok_or(bad)?;
        let (len, rest) = read_cells(rest, size_cells).ok_or(bad)?;
        ranges = rest;
        let space = (hi >> 24) & 3;
        let prefetchable = hi & (1 << 30) != 0;
        // Space code 0b10 = 32-bit memory. Take the first non-prefetchable one
        // that lies below 4 GiB on the bus.
        if mem32.is_none()
            && space == 2
            && !prefetchable
            && pci.checked_add(len).is_some_and(|e| e <= 1 << 32)
        {
            mem32 = Some(Window {
                cpu_base: cpu,
                pci_base: pci,
                size: len,
                used: 0,
            });
        }
    }
    // SAFETY: the device tree says this is an ECAM region for these buses,
    // reachable by the CPU (checked above).
    let ecam = unsafe { Ecam::new(base as usize, bus_start as u8, bus_end as u8) };
    Ok(PciHost::new(ecam, mem32))
}
