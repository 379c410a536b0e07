//! Reserved memory regions (DMAR RMRRs): memory that firmware-owned devices
//! keep DMAing to (USB legacy emulation, graphics stolen memory), which must
//! stay identity mapped for the devices in each region's scope once
//! translation is on.

use iova_core::{Error, IommuDomain, IotlbGather, Iova, PhysAddr, Prot};

use crate::acpi::dmar::{Bdf, Dmar};

/// What [`map_reserved_regions`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReservedRegions {
    /// Regions identity mapped.
    pub mapped: usize,
    /// Regions naming the device that were skipped as malformed (limit
    /// below base, or not 4 KiB aligned).
    pub malformed: usize,
}

/// The RMRRs of `segment` whose scopes name `dev`, as `(base, len)`, page
/// aligned; malformed ones are left out. Reserve these in the IOVA
/// allocator so they are never handed out.
pub fn reserved_regions_for<'t>(
    dmar: &Dmar<'t>,
    segment: u16,
    dev: Bdf,
    mut bridge_buses: impl FnMut(Bdf) -> Option<(u8, u8)> + 't,
) -> impl Iterator<Item = (u64, u64)> + 't {
    dmar.reserved_regions()
        .filter(move |r| r.segment == segment && r.scopes.contains(dev, &mut bridge_buses))
        .filter_map(|r| well_formed(r.base, r.len()?))
}

fn well_formed(base: u64, len: u64) -> Option<(u64, u64)> {
    (base & 0xfff == 0 && len & 0xfff == 0 && base.checked_add(len).is_some())
        .then_some((base, len))
}

/// Identity-maps (read-write) every RMRR of `segment` naming `dev` into
/// `domain`, recording the new entries in `gather` (flush it before the
/// device is attached). A region that overlaps something already mapped is
/// an error ([`Error::AlreadyMapped`]); regions mapped before it stay.
pub fn map_reserved_regions<D: IommuDomain + ?Sized>(
    dmar: &Dmar<'_>,
    segment: u16,
    dev: Bdf,
    mut bridge_buses: impl FnMut(Bdf) -> Option<(u8, u8)>,
    domain: &D,
    gather: &mut IotlbGather,
) -> Result<ReservedRegions, Error> {
    let mut done = ReservedRegions::default();
    for r in dmar.reserved_regions() {
        if r.segment != segment || !r.scopes.contains(dev, &mut bridge_buses) {
            continue;
        }
        match r.len().and_then(|len| well_formed(r.base, len)) {
            Some((base, len)) => {
                domain.map(Iova(base), PhysAddr(base), len, Prot::RW, gather)?;
                done.mapped += 1;
            }
            None => done.malformed += 1,
        }
    }
    Ok(done)
}
