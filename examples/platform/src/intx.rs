//! Legacy PCI INTx interrupts, the same API on both machines: find where a
//! function's interrupt pin arrives ([`route`]), give it a handler
//! ([`IntxLine::enable`]), mask and unmask it, wait for it (bounded).
//!
//! * x86_64 `q35`: the ICH9 routes INTx of a device in slot `s` on the
//!   root bus, pin `p` (A = 0), to PIRQ `(s + p) % 4 + 4` (PIRQE-H) for
//!   slots 0-24 (QEMU's `lpc_ich9.c`; slots 25-31 follow the chipset's
//!   DxxIR registers and are refused), and PIRQ `n` reaches the I/O APIC
//!   on GSI `16 + n` whatever the 8259 routing says. The GSI's redirection
//!   entry ([`crate::ioapic`]) is level triggered, active low, to this
//!   CPU's APIC ID, vector [`VECTOR_BASE`] + GSI.
//! * aarch64 `virt`: the PCIe host node's `interrupt-map` (looked up with
//!   `interrupt-map-mask`) names the GIC SPI of each (slot, pin); QEMU
//!   fills it with SPI `3 + (pin + slot) % 4`, i.e. INTIDs 35-38,
//!   level-high. The SPI is configured by [`crate::gic`]. Needs GICv3
//!   (`-M virt,gic-version=3`) and EL1.
//!
//! Only functions on the root bus are routed: behind a bridge the pin is
//! swizzled at each bridge, which is not modelled ([`IntxError::BehindBridge`]).
//!
//! INTx is level triggered: the handler must acknowledge the device (make
//! it lower the line) or return [`Handled::Mask`]; see [`crate::irq`].
//! [`IntxLine::enable`] also clears the function's INTx Disable bit.

use core::fmt;

use crate::BootInfo;
pub use crate::irq::{Handled, Handler};
use crate::pci::{Bdf, CMD_INTX_DISABLE, Ecam, reg};
use crate::time::Timeout;

/// Config-space offset of the Interrupt Pin register (0 = none, 1-4 =
/// INTA#-INTD#).
pub const INTERRUPT_PIN: u16 = 0x3d;
/// x86_64: the vector of GSI `n` is `VECTOR_BASE + n`.
pub const VECTOR_BASE: u8 = 0x40;

/// Why an INTx line could not be routed or enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntxError {
    /// No function at this BDF.
    NoFunction(Bdf),
    /// The Interrupt Pin register is 0: the function has no INTx.
    NoPin(Bdf),
    /// The Interrupt Pin register holds a value that is no pin (1-4).
    BadPin(Bdf, u8),
    /// The function is not on the root bus (the pin would be swizzled by
    /// the bridges in between).
    BehindBridge(Bdf),
    /// q35: slots 25-31 are routed by the chipset's DxxIR registers, not
    /// read here.
    ChipsetRouted(Bdf),
    /// x86_64: the local APIC could not be enabled.
    #[cfg(target_arch = "x86_64")]
    Apic(crate::apic::ApicError),
    /// x86_64: the I/O APIC is absent, or the GSI or destination does not
    /// fit it.
    #[cfg(target_arch = "x86_64")]
    IoApic(crate::ioapic::IoApicError),
    /// The vector the GSI would use is not below the platform's own
    /// vectors (GSI, vector).
    VectorOutOfRange(u32, u32),
    /// aarch64: the device tree is unusable.
    Dtb(crate::dtb::DtbError),
    /// aarch64: the PCIe host node has no usable `interrupt-map` /
    /// `interrupt-map-mask` (what is wrong).
    NoInterruptMap(&'static str),
    /// aarch64: `interrupt-map` has no entry for this function and pin.
    NoMapEntry(Bdf, char),
    /// aarch64: the entry names an interrupt parent that is not the GICv3
    /// we drive (its phandle).
    UnknownParent(u32),
    /// aarch64: the entry's GIC interrupt is not an SPI (its type cell).
    NotSpi(u32),
    /// aarch64: the entry's trigger flags are not level-high or
    /// edge-rising (the flags cell).
    BadTrigger(u32),
    /// aarch64: the GIC could not be used.
    #[cfg(target_arch = "aarch64")]
    Gic(crate::gic::GicError),
    /// The interrupt number already has a handler (another line shares
    /// it: sharing is not supported).
    InUse(u32),
}

impl fmt::Display for IntxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoFunction(b) => write!(f, "intx: no PCI function at {b}"),
            Self::NoPin(b) => write!(f, "intx: {b} has no interrupt pin (Interrupt Pin 0)"),
            Self::BadPin(b, p) => write!(f, "intx: {b} Interrupt Pin register reads {p}"),
            Self::BehindBridge(b) => write!(
                f,
                "intx: {b} is behind a bridge; only root-bus functions are routed"
            ),
            Self::ChipsetRouted(b) => write!(
                f,
                "intx: {b} is in slot 25-31, routed by ICH9 DxxIR registers (not supported)"
            ),
            #[cfg(target_arch = "x86_64")]
            Self::Apic(e) => write!(f, "intx: {e}"),
            #[cfg(target_arch = "x86_64")]
            Self::IoApic(e) => write!(f, "intx: {e}"),
            Self::VectorOutOfRange(gsi, v) => {
                write!(
                    f,
                    "intx: GSI {gsi} would need vector {v:#x}, which is taken or too big"
                )
            }
            Self::Dtb(e) => write!(f, "intx: {e}"),
            Self::NoInterruptMap(why) => write!(f, "intx: PCIe host interrupt-map: {why}"),
            Self::NoMapEntry(b, p) => {
                write!(f, "intx: interrupt-map has no entry for {b} pin {p}")
            }
            Self::UnknownParent(ph) => write!(
                f,
                "intx: interrupt-map names parent phandle {ph:#x}, not the arm,gic-v3 node"
            ),
            Self::NotSpi(kind) => {
                write!(
                    f,
                    "intx: interrupt-map names a GIC interrupt of type {kind}, not an SPI"
                )
            }
            Self::BadTrigger(flags) => write!(
                f,
                "intx: interrupt-map trigger flags {flags:#x} (GIC takes level-high or rising edge)"
            ),
            #[cfg(target_arch = "aarch64")]
            Self::Gic(e) => write!(f, "intx: {e}"),
            Self::InUse(n) => write!(f, "intx: interrupt {n:#x} already has a handler"),
        }
    }
}

impl From<crate::irq::RegisterError> for IntxError {
    fn from(e: crate::irq::RegisterError) -> Self {
        match e {
            crate::irq::RegisterError::InUse(n) | crate::irq::RegisterError::OutOfRange(n) => {
                Self::InUse(n)
            }
        }
    }
}

/// Where one function's INTx pin arrives. Routing it programs nothing:
/// [`IntxLine::enable`] does.
#[derive(Debug, Clone, Copy)]
pub struct IntxLine {
    ecam: Ecam,
    bdf: Bdf,
    /// 1-4 = INTA#-INTD#.
    pin: u8,
    /// The interrupt number handlers are keyed by: vector / INTID.
    irq: u32,
    /// What is masked: GSI / INTID.
    source: u32,
    /// x86_64: the destination APIC ID. aarch64: level-triggered (1) or
    /// edge (0), already programmed by `route`.
    #[cfg_attr(target_arch = "aarch64", allow(dead_code))]
    extra: u32,
}

/// The function's pin as a letter, A-D.
fn pin_letter(pin: u8) -> char {
    (b'A' + pin.saturating_sub(1).min(3)) as char
}

impl fmt::Display for IntxLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "INTx pin {} of {} -> ", self.pin(), self.bdf)?;
        #[cfg(target_arch = "x86_64")]
        return write!(f, "GSI {} vector {:#x}", self.source, self.irq);
        #[cfg(target_arch = "aarch64")]
        return write!(f, "INTID {}", self.irq);
    }
}

/// Finds where `bdf`'s INTx pin (read from its Interrupt Pin register)
/// arrives, bringing up the interrupt controllers it needs (again is
/// harmless): x86_64 the local APIC (in the mode the CPU is in) and the
/// I/O APIC; aarch64 the GICv3 (see the module docs).
pub fn route(boot: &BootInfo, ecam: &Ecam, bdf: Bdf) -> Result<IntxLine, IntxError> {
    if ecam.function(bdf).is_none() {
        return Err(IntxError::NoFunction(bdf));
    }
    let pin = ecam.read8(bdf, INTERRUPT_PIN);
    match pin {
        0 => return Err(IntxError::NoPin(bdf)),
        1..=4 => {}
        _ => return Err(IntxError::BadPin(bdf, pin)),
    }
    if bdf.bus != *ecam.buses().start() {
        return Err(IntxError::BehindBridge(bdf));
    }
    let (irq, source, extra) = arch_route(boot, bdf, pin)?;
    Ok(IntxLine {
        ecam: *ecam,
        bdf,
        pin,
        irq,
        source,
        extra,
    })
}

#[cfg(target_arch = "x86_64")]
fn arch_route(_boot: &BootInfo, bdf: Bdf, pin: u8) -> Result<(u32, u32, u32), IntxError> {
    use crate::ioapic::IoApic;
    if bdf.device >= 25 {
        return Err(IntxError::ChipsetRouted(bdf));
    }
    let pirq = (u32::from(bdf.device) + u32::from(pin - 1)) % 4 + 4;
    let gsi = 16 + pirq;
    let apic = crate::apic::enable_current_mode().map_err(IntxError::Apic)?;
    let ioapic = IoApic::probe().map_err(IntxError::IoApic)?;
    if gsi >= ioapic.pins() {
        return Err(IntxError::IoApic(
            crate::ioapic::IoApicError::GsiOutOfRange(gsi, ioapic.pins()),
        ));
    }
    let vector = u32::from(VECTOR_BASE) + gsi;
    if vector >= u32::from(crate::apic::TIMER_VECTOR) {
        return Err(IntxError::VectorOutOfRange(gsi, vector));
    }
    let id = apic.id();
    if id > 0xff {
        return Err(IntxError::IoApic(
            crate::ioapic::IoApicError::DestinationTooWide(id),
        ));
    }
    Ok((vector, gsi, id))
}

#[cfg(target_arch = "aarch64")]
fn arch_route(boot: &BootInfo, bdf: Bdf, pin: u8) -> Result<(u32, u32, u32), IntxError> {
    use crate::dtb::read_cells;

    let fdt = boot.arch.dtb.map_err(IntxError::Dtb)?;
    crate::gic::bring_up(&fdt).map_err(IntxError::Gic)?;
    let gic_phandle = fdt
        .find_compatible("arm,gic-v3")
        .map_err(IntxError::Dtb)?
        .and_then(|n| n.prop_u32("phandle"));
    let host = fdt
        .find_compatible("pci-host-ecam-generic")
        .map_err(IntxError::Dtb)?
        .ok_or(IntxError::NoInterruptMap("no pci-host-ecam-generic node"))?;
    let bad = IntxError::NoInterruptMap("malformed");
    let addr_cells = host.prop_u32("#address-cells").unwrap_or(3);
    let int_cells = host.prop_u32("#interrupt-cells").unwrap_or(1);
    if addr_cells != 3 || int_cells != 1 {
        return Err(IntxError::NoInterruptMap(
            "#address-cells is not 3 or #interrupt-cells is not 1",
        ));
    }
    let mask_bytes = host
        .prop("interrupt-map-mask")
        .ok_or(IntxError::NoInterruptMap("no interrupt-map-mask"))?;
    let mut mask = [0u64; 4];
    let mut rest = mask_bytes;
    for m in &mut mask {
        let (v, r) = read_cells(rest, 1).ok_or(bad)?;
        *m = v;
        rest = r;
    }
    // The child unit address of a function: phys.hi = bus, device,
    // function; phys.mid and phys.lo 0. Then the pin.
    let key = [u64::from(bdf.rid()) << 8, 0, 0, u64::from(pin)];
    let mut map = host
        .prop("interrupt-map")
        .ok_or(IntxError::NoInterruptMap("no interrupt-map"))?;
    while !map.is_empty() {
        let mut child = [0u64; 4];
        for c in &mut child {
            let (v, r) = read_cells(map, 1).ok_or(bad)?;
            *c = v;
            map = r;
        }
        let (phandle, r) = read_cells(map, 1).ok_or(bad)?;
        map = r;
        let phandle = phandle as u32;
        let parent = fdt
            .nodes()
            .filter_map(Result::ok)
            .find(|n| n.prop_u32("phandle") == Some(phandle))
            .ok_or(IntxError::UnknownParent(phandle))?;
        let parent_addr = parent.prop_u32("#address-cells").unwrap_or(0);
        let parent_int = parent.prop_u32("#interrupt-cells").ok_or(bad)?;
        let mut spec = [0u64; 3];
        for i in 0..parent_addr + parent_int {
            let (v, r) = read_cells(map, 1).ok_or(bad)?;
            map = r;
            if let Some(s) = i
                .checked_sub(parent_addr)
                .and_then(|j| spec.get_mut(j as usize))
            {
                *s = v;
            }
        }
        if (0..4).any(|i| child[i] & mask[i] != key[i] & mask[i]) {
            continue;
        }
        if Some(phandle) != gic_phandle || parent_int != 3 {
            return Err(IntxError::UnknownParent(phandle));
        }
        let [kind, number, flags] = spec;
        if kind != crate::gic::DT_SPI {
            return Err(IntxError::NotSpi(kind as u32));
        }
        // Flags 4 = level high, 1 = rising edge (the GIC takes no other).
        let level = match flags & 0xf {
            4 => true,
            1 => false,
            other => return Err(IntxError::BadTrigger(other as u32)),
        };
        let intid = u32::try_from(number + 32).map_err(|_| bad)?;
        crate::gic::configure_spi(intid, level).map_err(IntxError::Gic)?;
        return Ok((intid, intid, u32::from(level)));
    }
    Err(IntxError::NoMapEntry(bdf, pin_letter(pin)))
}

impl IntxLine {
    /// The function.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Its pin, `'A'`-`'D'`.
    pub fn pin(&self) -> char {
        pin_letter(self.pin)
    }

    /// The interrupt number its handler runs for: the vector (x86_64) or
    /// the INTID (aarch64).
    pub fn irq(&self) -> u32 {
        self.irq
    }

    /// Where the line enters the interrupt controller: the GSI (x86_64)
    /// or the INTID (aarch64).
    pub fn source(&self) -> u32 {
        self.source
    }

    /// Registers `handler`, clears the function's INTx Disable bit, and
    /// unmasks the line (a level already asserted is delivered at the next
    /// wait).
    pub fn enable(&self, handler: Handler) -> Result<(), IntxError> {
        crate::irq::register(self.irq, self.source, handler)?;
        let cmd = self.ecam.read16(self.bdf, reg::COMMAND);
        if cmd & CMD_INTX_DISABLE != 0 {
            // SAFETY: clearing INTx Disable only lets the function assert
            // its interrupt pin; no memory effect.
            unsafe {
                self.ecam
                    .write16(self.bdf, reg::COMMAND, cmd & !CMD_INTX_DISABLE)
            };
        }
        #[cfg(target_arch = "x86_64")]
        {
            let programmed = crate::ioapic::IoApic::probe()
                .and_then(|io| io.route_level(self.source, self.irq as u8, self.extra, false));
            if let Err(e) = programmed {
                crate::irq::unregister(self.irq);
                return Err(IntxError::IoApic(e));
            }
        }
        #[cfg(target_arch = "aarch64")]
        crate::gic::set_enabled(self.source, true);
        Ok(())
    }

    /// Masks the line at the interrupt controller: an assertion waits there
    /// until [`unmask`](Self::unmask).
    pub fn mask(&self) {
        #[cfg(target_arch = "x86_64")]
        crate::ioapic::set_masked(self.source, true);
        #[cfg(target_arch = "aarch64")]
        crate::gic::set_enabled(self.source, false);
    }

    /// Unmasks the line (after [`enable`](Self::enable)).
    pub fn unmask(&self) {
        #[cfg(target_arch = "x86_64")]
        crate::ioapic::set_masked(self.source, false);
        #[cfg(target_arch = "aarch64")]
        crate::gic::set_enabled(self.source, true);
    }

    /// Masks the line and removes its handler.
    pub fn disable(&self) {
        self.mask();
        crate::irq::unregister(self.irq);
    }

    /// How many times its handler has run since boot.
    pub fn runs(&self) -> u32 {
        crate::irq::runs(self.irq)
    }

    /// Sleeps until its handler has run once more (an interrupt already
    /// pending counts), or `ms` milliseconds have passed.
    pub fn wait(&self, ms: u64) -> Result<(), Timeout> {
        let before = self.runs();
        crate::irq::wait_until(ms, || self.runs() != before)
    }
}
