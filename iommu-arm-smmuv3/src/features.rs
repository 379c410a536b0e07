//! What an SMMU can do, decoded from IDR0-IDR5, and the checks that refuse
//! hardware this driver cannot drive.

use crate::regs::{Mmio, MmioError, field, idr0, idr1, idr3, idr5, off};

/// The raw identification registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdRegs {
    /// IDR0 ... IDR5, in order.
    pub idr: [u32; 6],
    /// AIDR (architecture minor revision).
    pub aidr: u32,
}

impl IdRegs {
    /// Reads the ID registers, each as a 32-bit access.
    ///
    /// # Errors
    ///
    /// The [`MmioError`] of the first access `mmio` refused.
    pub fn read(mmio: &impl Mmio) -> Result<Self, MmioError> {
        let mut idr = [0; 6];
        for (i, r) in idr.iter_mut().enumerate() {
            *r = mmio.read32(off::IDR0 + 4 * i)?;
        }
        Ok(Self {
            idr,
            aidr: mmio.read32(off::AIDR)?,
        })
    }
}

/// Stream-table formats the SMMU offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTableLevels {
    /// Linear only.
    Linear,
    /// Linear and two-level.
    TwoLevel,
}

/// Translation granules (bit set per supported granule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granules {
    /// 4 KiB.
    pub g4k: bool,
    /// 16 KiB.
    pub g16k: bool,
    /// 64 KiB.
    pub g64k: bool,
}

/// The decoded feature set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// Stage 1 translation.
    pub stage1: bool,
    /// Stage 2 translation.
    pub stage2: bool,
    /// Coherent table walks and queue accesses (IDR0.COHACC).
    pub coherent: bool,
    /// Broadcast TLB maintenance.
    pub btm: bool,
    /// EL2 stage-1 contexts.
    pub hyp: bool,
    /// ATS.
    pub ats: bool,
    /// PRI.
    pub pri: bool,
    /// MSIs.
    pub msi: bool,
    /// WFE wake-up on CMD_SYNC.
    pub sev: bool,
    /// ASID width in bits (8 or 16).
    pub asid_bits: u32,
    /// VMID width in bits (8 or 16).
    pub vmid_bits: u32,
    /// Two-level CD tables.
    pub cd2l: bool,
    /// Stream-table formats.
    pub st_levels: StreamTableLevels,
    /// StreamID width in bits.
    pub sid_bits: u32,
    /// SubstreamID width in bits.
    pub ssid_bits: u32,
    /// log2 of the largest command queue.
    pub cmdq_log2: u32,
    /// log2 of the largest event queue.
    pub evtq_log2: u32,
    /// Range invalidation (IDR3.RIL).
    pub ril: bool,
    /// Hierarchical attribute disable.
    pub had: bool,
    /// Stage-2 XNX.
    pub xnx: bool,
    /// Break-before-make level (0-2).
    pub bbml: u32,
    /// Output address size in bits.
    pub oas_bits: u32,
    /// Translation granules.
    pub granules: Granules,
    /// Input address size of stage 1 in bits (48, or 52 with VAX).
    pub ias_s1_bits: u32,
    /// Architecture minor revision (0 = SMMUv3.0, 1 = v3.1, ...).
    pub revision: u32,
    /// Both stages together (nested translation).
    pub nesting: bool,
}

/// Why [`Features::decode`] refused the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Unsupported {
    /// Neither stage 1 nor stage 2 translation.
    NoTranslation,
    /// No AArch64 translation-table format (IDR0.TTF).
    NoAarch64Tables,
    /// Tables are big-endian only.
    BigEndianOnly,
    /// The 4 KiB granule is missing (our page-table formats use it).
    No4kGranule,
    /// The output address size code is reserved.
    BadOas(u32),
    /// Queue or table bases are preset by the implementation.
    Preset,
    /// A command queue of fewer than 2 entries, or an event queue of none.
    QueueTooSmall,
    /// StreamID width above 32 bits.
    BadSidSize(u32),
    /// MSIs were asked for but IDR0.MSI is clear.
    NoMsi,
    /// The SMMU does not snoop CPU caches and the driver was given no cache
    /// maintenance (see [`crate::Smmu::with_cache`]).
    NotCoherent,
}

impl Features {
    /// Decodes the identification registers and refuses what the driver cannot use.
    pub fn decode(id: &IdRegs) -> Result<Self, Unsupported> {
        let [i0, i1, _i2, i3, _i4, i5] = id.idr;
        let ttf = field(i0, idr0::TTF_SHIFT, 2);
        if ttf & 0b10 == 0 {
            return Err(Unsupported::NoAarch64Tables);
        }
        if field(i0, idr0::TTENDIAN_SHIFT, 2) == 0b11 {
            return Err(Unsupported::BigEndianOnly);
        }
        let stage1 = i0 & idr0::S1P != 0;
        let stage2 = i0 & idr0::S2P != 0;
        if !stage1 && !stage2 {
            return Err(Unsupported::NoTranslation);
        }
        if i1 & (idr1::QUEUES_PRESET | idr1::TABLES_PRESET) != 0 {
            return Err(Unsupported::Preset);
        }
        let oas_bits = match i5 & idr5::OAS_MASK {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            5 => 48,
            6 => 52,
            c => return Err(Unsupported::BadOas(c)),
        };
        let granules = Granules {
            g4k: i5 & idr5::GRAN4K != 0,
            g16k: i5 & idr5::GRAN16K != 0,
            g64k: i5 & idr5::GRAN64K != 0,
        };
        if !granules.g4k {
            return Err(Unsupported::No4kGranule);
        }
        let sid_bits = field(i1, idr1::SIDSIZE_SHIFT, 6);
        if sid_bits > 32 {
            return Err(Unsupported::BadSidSize(sid_bits));
        }
        let cmdq_log2 = field(i1, idr1::CMDQS_SHIFT, 5);
        let evtq_log2 = field(i1, idr1::EVENTQS_SHIFT, 5);
        if cmdq_log2 == 0 {
            return Err(Unsupported::QueueTooSmall);
        }
        let coherent = i0 & idr0::COHACC != 0;
        Ok(Self {
            stage1,
            stage2,
            coherent,
            btm: i0 & idr0::BTM != 0,
            hyp: i0 & idr0::HYP != 0,
            ats: i0 & idr0::ATS != 0,
            pri: i0 & idr0::PRI != 0,
            msi: i0 & idr0::MSI != 0,
            sev: i0 & idr0::SEV != 0,
            asid_bits: if i0 & idr0::ASID16 != 0 { 16 } else { 8 },
            vmid_bits: if i0 & idr0::VMID16 != 0 { 16 } else { 8 },
            cd2l: i0 & idr0::CD2L != 0,
            st_levels: if field(i0, idr0::ST_LEVEL_SHIFT, 2) == 1 {
                StreamTableLevels::TwoLevel
            } else {
                StreamTableLevels::Linear
            },
            sid_bits,
            ssid_bits: field(i1, idr1::SSIDSIZE_SHIFT, 5),
            cmdq_log2,
            evtq_log2,
            ril: i3 & idr3::RIL != 0,
            had: i3 & idr3::HAD != 0,
            xnx: i3 & idr3::XNX != 0,
            bbml: field(i3, idr3::BBML_SHIFT, 2),
            oas_bits,
            granules,
            ias_s1_bits: if field(i5, idr5::VAX_SHIFT, 2) == 1 {
                52
            } else {
                48
            },
            revision: id.aidr & 0xff,
            nesting: stage1 && stage2,
        })
    }

    /// The stage-2 input size: the IPA is at most the output size.
    pub fn ias_s2_bits(&self) -> u32 {
        self.oas_bits.min(48)
    }

    /// Output address size of the tables our formats write (48 at most:
    /// 52-bit addresses need the LPA descriptor layout, which we do not use).
    pub fn table_oas_bits(&self) -> u32 {
        self.oas_bits.min(48)
    }
}

/// The IPS / PS code of an output size (0 = 32 bits ... 5 = 48 bits).
pub(crate) const fn size_code(bits: u32) -> u64 {
    match bits {
        0..=32 => 0,
        33..=36 => 1,
        37..=40 => 2,
        41..=42 => 3,
        43..=44 => 4,
        45..=48 => 5,
        _ => 6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_codes() {
        assert_eq!(
            [32, 36, 40, 42, 44, 48, 52].map(size_code),
            [0, 1, 2, 3, 4, 5, 6]
        );
    }
}
