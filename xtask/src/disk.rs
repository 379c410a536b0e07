//! Disk images made at test time for the virtio-blk system tests.
//!
//! A system-test row asks for a disk by putting [`PLACEHOLDER`] in one of its
//! QEMU arguments, e.g.
//!
//! ```text
//! "-drive", "file=@DISK@,format=raw,if=none,id=blk0",
//! "-device", "virtio-blk-pci,drive=blk0,iommu_platform=on,disable-legacy=on",
//! ```
//!
//! Before the boot the harness creates `target/xtask/disks/<row name>.img`
//! with `qemu-img create -f raw <path> 16M`, fills it with the initial
//! pattern and substitutes the path for the placeholder (so the printed
//! command line is the real one). After QEMU exits it checks on the host
//! that the image holds exactly what the guest was supposed to write.
//!
//! # Pattern contract
//!
//! Keep in sync with `examples/blk-io/src/pattern.rs`.
//!
//! * 512-byte sectors, [`DISK_BYTES`] = 16 MiB.
//! * Initial content of sector `s`, byte `j`:
//!   `(s as u32).wrapping_mul(31).wrapping_add(j as u32) as u8 ^ 0xA5`,
//!   except bytes 0..8 of every sector = `s` as u64 little-endian.
//! * The guest writes sectors [`WRITTEN`] = 64..128 (32 KiB): bytes 0..8 =
//!   `s` as u64 little-endian, byte `j >= 8` =
//!   `(s as u32).wrapping_mul(7).wrapping_add(j as u32) as u8 ^ 0x3C`.
//!   Nothing else is written.

use std::fmt;
use std::fs;
use std::ops::Range;
use std::path::PathBuf;

use crate::systests::SystemTest;
use crate::util;

/// What a row writes in a QEMU argument to ask for a disk image.
pub const PLACEHOLDER: &str = "@DISK@";
/// Sector size of the pattern contract.
pub const SECTOR: usize = 512;
/// Size of every image (`qemu-img create ... 16M`).
pub const DISK_BYTES: u64 = 16 << 20;
/// Sectors the guest writes (keep in sync with `examples/blk-io/src/pattern.rs`).
pub const WRITTEN: Range<u64> = 64..128;

/// Byte `j` of sector `s` before the boot.
pub fn initial_byte(s: u64, j: usize) -> u8 {
    if j < 8 {
        s.to_le_bytes()[j]
    } else {
        (s as u32).wrapping_mul(31).wrapping_add(j as u32) as u8 ^ 0xA5
    }
}

/// Byte `j` of sector `s` as the guest writes it.
pub fn written_byte(s: u64, j: usize) -> u8 {
    if j < 8 {
        s.to_le_bytes()[j]
    } else {
        (s as u32).wrapping_mul(7).wrapping_add(j as u32) as u8 ^ 0x3C
    }
}

/// What sector `s` must hold after the guest ran.
pub fn expected_byte(s: u64, j: usize) -> u8 {
    if WRITTEN.contains(&s) {
        written_byte(s, j)
    } else {
        initial_byte(s, j)
    }
}

/// The whole initial image.
pub fn initial_image() -> Vec<u8> {
    let sectors = DISK_BYTES / SECTOR as u64;
    let mut image = Vec::with_capacity(DISK_BYTES as usize);
    for s in 0..sectors {
        image.extend((0..SECTOR).map(|j| initial_byte(s, j)));
    }
    image
}

/// The first place an image differs from what the guest should have left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The image is not [`DISK_BYTES`] long.
    Size(u64),
    /// A sector holds the wrong bytes.
    Sector {
        /// First bad sector.
        sector: u64,
        /// First bad byte in it.
        offset: usize,
        /// What should be there.
        expected: u8,
        /// What is there.
        found: u8,
        /// Whether the guest should have written this sector.
        written: bool,
        /// How many sectors are bad in all.
        bad_sectors: u64,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Size(n) => write!(f, "image is {n} bytes, expected {DISK_BYTES}"),
            Self::Sector {
                sector,
                offset,
                expected,
                found,
                written,
                bad_sectors,
            } => {
                let what = if *written {
                    "the guest should have written it"
                } else {
                    "it should still hold the initial pattern"
                };
                write!(
                    f,
                    "first bad sector {sector} ({what}): byte {offset} is {found:#04x}, \
                     expected {expected:#04x}; {bad_sectors} bad sector(s) in all"
                )
            }
        }
    }
}

/// Checks a whole image against the contract.
pub fn verify_image(image: &[u8]) -> Result<(), Mismatch> {
    if image.len() as u64 != DISK_BYTES {
        return Err(Mismatch::Size(image.len() as u64));
    }
    let mut first = None;
    let mut bad_sectors = 0;
    for (s, sector) in image.chunks_exact(SECTOR).enumerate() {
        let s = s as u64;
        let bad = sector
            .iter()
            .enumerate()
            .find(|&(j, &b)| b != expected_byte(s, j));
        if let Some((offset, &found)) = bad {
            bad_sectors += 1;
            if first.is_none() {
                first = Some((s, offset, found));
            }
        }
    }
    match first {
        None => Ok(()),
        Some((sector, offset, found)) => Err(Mismatch::Sector {
            sector,
            offset,
            expected: expected_byte(sector, offset),
            found,
            written: WRITTEN.contains(&sector),
            bad_sectors,
        }),
    }
}

/// Whether a row asks for a disk image.
pub fn wanted(test: &SystemTest) -> bool {
    test.qemu_args.iter().any(|a| a.contains(PLACEHOLDER))
}

/// The image path of a row: `target/xtask/disks/<row name>.img`.
pub fn image_path(test: &SystemTest) -> PathBuf {
    let name = util::log_file_name(test.name);
    let stem = name.strip_suffix(".log").unwrap_or(&name);
    util::repo_root()
        .join("target")
        .join("xtask")
        .join("disks")
        .join(format!("{stem}.img"))
}

/// A row's QEMU arguments with the placeholder replaced by its image path.
pub fn substitute(test: &SystemTest, args: &[&str]) -> Vec<String> {
    let path = image_path(test).display().to_string();
    args.iter().map(|a| a.replace(PLACEHOLDER, &path)).collect()
}

/// The `qemu-img` binary (`QEMU_IMG` overrides).
pub fn qemu_img() -> String {
    std::env::var("QEMU_IMG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "qemu-img".to_string())
}

/// Creates a row's image with `qemu-img` and fills it with the initial
/// pattern. Does nothing for a row without a disk.
pub fn prepare(test: &SystemTest) -> Result<(), String> {
    if !wanted(test) {
        return Ok(());
    }
    let path = image_path(test);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let program = qemu_img();
    let args = vec![
        "create".to_string(),
        "-f".to_string(),
        "raw".to_string(),
        path.display().to_string(),
        "16M".to_string(),
    ];
    let out = std::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("could not run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` failed ({}): {}",
            util::command_line(&program, &args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let size = fs::metadata(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size != DISK_BYTES {
        return Err(format!(
            "{program} made {} of {size} bytes, expected {DISK_BYTES}",
            path.display()
        ));
    }
    fs::write(&path, initial_image()).map_err(|e| format!("{}: {e}", path.display()))
}

/// After the boot: `Ok(summary)` if the row's image holds what the guest
/// should have written, else the reason naming the first bad sector.
/// `Ok(None)` for a row without a disk.
pub fn verify(test: &SystemTest) -> Result<Option<String>, String> {
    if !wanted(test) {
        return Ok(None);
    }
    let path = image_path(test);
    let image = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    verify_image(&image)
        .map(|()| {
            Some(format!(
                "disk image {} checked: sectors {}..{} hold the write pattern, all others the initial one",
                util::display_path(&path),
                WRITTEN.start,
                WRITTEN.end
            ))
        })
        .map_err(|m| format!("disk image {}: {m}", util::display_path(&path)))
}

/// A row's verdict from the serial/exit-status check and the disk check:
/// the disk summary if both passed, else every reason.
pub fn combine(
    judged: Result<(), String>,
    disk: Result<Option<String>, String>,
) -> Result<Option<String>, String> {
    match (judged, disk) {
        (Ok(()), disk) => disk,
        (Err(why), Ok(_)) => Err(why),
        (Err(why), Err(disk)) => Err(format!("{why}; {disk}")),
    }
}

/// The guest's side of the contract, compiled on the host so the tests can
/// hold the two sides to each other.
#[cfg(test)]
#[path = "../../examples/blk-io/src/pattern.rs"]
#[allow(dead_code)]
mod guest_pattern;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_and_host_patterns_agree() {
        use guest_pattern::Pattern;
        assert_eq!(guest_pattern::WRITTEN, WRITTEN);
        assert_eq!(guest_pattern::SECTOR, SECTOR);
        assert_eq!(guest_pattern::DISK_SECTORS * SECTOR as u64, DISK_BYTES);
        let sectors = DISK_BYTES / SECTOR as u64;
        // Every sector the guest touches, and a spread of the rest
        // (including the last, where the u32 arithmetic is largest).
        let probe = (0..300)
            .chain((300..sectors).step_by(97))
            .chain([sectors - 1]);
        for s in probe {
            for j in 0..SECTOR {
                assert_eq!(
                    Pattern::Initial.byte(s, j),
                    initial_byte(s, j),
                    "initial {s}/{j}"
                );
                assert_eq!(
                    Pattern::Written.byte(s, j),
                    written_byte(s, j),
                    "written {s}/{j}"
                );
            }
        }
        // The guest's own check finds a flipped byte where the host's does.
        let mut buf = vec![0u8; 4 * SECTOR];
        Pattern::Written.fill(64, &mut buf);
        assert_eq!(Pattern::Written.check(64, &buf), Ok(()));
        assert!(Pattern::Initial.check(64, &buf).is_err());
        buf[2 * SECTOR + 77] ^= 0x10;
        let m = Pattern::Written.check(64, &buf).unwrap_err();
        assert_eq!((m.sector, m.offset), (66, 77));
        assert_eq!(m.expected, written_byte(66, 77));
        assert_eq!(m.found, written_byte(66, 77) ^ 0x10);
    }

    fn written_image() -> Vec<u8> {
        let mut image = initial_image();
        for s in WRITTEN {
            for j in 0..SECTOR {
                image[s as usize * SECTOR + j] = written_byte(s, j);
            }
        }
        image
    }

    #[test]
    fn pattern_matches_the_contract() {
        // Sector numbers in the first 8 bytes, little-endian.
        assert_eq!(initial_byte(0x1234, 0), 0x34);
        assert_eq!(initial_byte(0x1234, 1), 0x12);
        assert_eq!(initial_byte(0x1234, 7), 0);
        assert_eq!(written_byte(100, 0), 100);
        // Spot values worked out by hand from the formulas.
        assert_eq!(initial_byte(0, 8), 8 ^ 0xA5);
        assert_eq!(initial_byte(3, 10), (93u32 + 10) as u8 ^ 0xA5);
        assert_eq!(initial_byte(1000, 511), (31_000u32 + 511) as u8 ^ 0xA5);
        assert_eq!(written_byte(64, 8), (448u32 + 8) as u8 ^ 0x3C);
        assert_eq!(written_byte(127, 511), (889u32 + 511) as u8 ^ 0x3C);
        // The two patterns differ in every written sector (otherwise a guest
        // that wrote nothing would pass).
        for s in WRITTEN {
            assert!((8..SECTOR).any(|j| initial_byte(s, j) != written_byte(s, j)));
        }
        let image = initial_image();
        assert_eq!(image.len() as u64, DISK_BYTES);
        assert_eq!(image[5 * SECTOR + 9], initial_byte(5, 9));
    }

    #[test]
    fn a_correctly_written_image_passes() {
        assert_eq!(verify_image(&written_image()), Ok(()));
    }

    #[test]
    fn an_image_the_guest_did_not_write_fails_at_sector_64() {
        match verify_image(&initial_image()) {
            Err(Mismatch::Sector {
                sector,
                offset,
                written,
                bad_sectors,
                ..
            }) => {
                assert_eq!(sector, 64);
                assert_eq!(
                    offset, 8,
                    "bytes 0..8 are the sector number in both patterns"
                );
                assert!(written);
                assert_eq!(bad_sectors, 64);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn one_wrong_byte_in_a_written_sector_is_found() {
        let mut image = written_image();
        image[100 * SECTOR + 300] ^= 1;
        let err = verify_image(&image).unwrap_err();
        assert_eq!(
            err,
            Mismatch::Sector {
                sector: 100,
                offset: 300,
                expected: written_byte(100, 300),
                found: written_byte(100, 300) ^ 1,
                written: true,
                bad_sectors: 1,
            }
        );
        assert!(err.to_string().contains("first bad sector 100"), "{err}");
    }

    #[test]
    fn a_write_outside_the_written_range_is_found() {
        let mut image = written_image();
        // Sector 128 written with the write pattern: the guest wrote one too many.
        for j in 0..SECTOR {
            image[128 * SECTOR + j] = written_byte(128, j);
        }
        // And a stray byte far away.
        image[DISK_BYTES as usize - 1] ^= 0xff;
        match verify_image(&image) {
            Err(Mismatch::Sector {
                sector,
                written,
                bad_sectors,
                ..
            }) => {
                assert_eq!(sector, 128);
                assert!(!written);
                assert_eq!(bad_sectors, 2);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_sector_written_to_the_wrong_place_is_found() {
        // The guest's sector 70 landed at sector 71 (wrong LBA): both bad.
        let mut image = written_image();
        for j in 0..SECTOR {
            image[71 * SECTOR + j] = written_byte(70, j);
        }
        match verify_image(&image) {
            Err(Mismatch::Sector { sector, offset, .. }) => {
                assert_eq!(sector, 71);
                assert_eq!(offset, 0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_short_image_fails() {
        let mut image = written_image();
        image.truncate(SECTOR * 100);
        assert_eq!(verify_image(&image), Err(Mismatch::Size(51_200)));
    }

    #[test]
    fn placeholder_is_substituted() {
        let test = SystemTest {
            name: "blk-test-row",
            arch: crate::systests::Arch::Aarch64,
            example: "blk-noiommu",
            summary: "",
            iommu: "none",
            qemu_args: &["-drive", "file=@DISK@,format=raw,if=none,id=blk0"],
            expect: crate::systests::Expect::GuestSuccess,
            require: &[],
        };
        assert!(wanted(&test));
        let args = substitute(&test, test.qemu_args);
        let path = image_path(&test);
        assert!(path.ends_with("target/xtask/disks/blk-test-row.img"));
        assert_eq!(
            args[1],
            format!("file={},format=raw,if=none,id=blk0", path.display())
        );
        assert!(!args[1].contains(PLACEHOLDER));
    }
}
