//! The kernel command line QEMU passes with `-append`: `/chosen/bootargs`
//! in the device tree on aarch64 `virt`, the PVH start info's command line
//! on x86_64 `q35`. Examples use it to pick a scenario per system-test row.

use crate::BootInfo;

/// Longest x86_64 command line read (QEMU's PVH loader NUL-terminates it).
pub const MAX_LEN: usize = 256;

/// The command line, or `""` if there is none (or it is not UTF-8).
pub fn command_line(boot: &BootInfo) -> &'static str {
    #[cfg(target_arch = "aarch64")]
    {
        let Ok(fdt) = boot.arch.dtb.as_ref() else {
            return "";
        };
        fdt.nodes()
            .filter_map(Result::ok)
            .find(|n| n.name() == "chosen")
            .and_then(|n| n.prop_str("bootargs"))
            .unwrap_or("")
    }
    #[cfg(target_arch = "x86_64")]
    {
        let Some(pa) = boot.arch.start_info.as_ref().map(|s| s.cmdline_paddr) else {
            return "";
        };
        if pa == 0 || !crate::arch::cpu_can_reach(pa, MAX_LEN as u64) {
            return "";
        }
        // SAFETY: QEMU's PVH loader put a NUL-terminated command line at `pa`,
        // in identity-mapped low memory nothing writes; at most MAX_LEN bytes
        // are read.
        let byte = |i: usize| unsafe { core::ptr::read_volatile((pa as usize + i) as *const u8) };
        let mut len = 0;
        while len < MAX_LEN && byte(len) != 0 {
            len += 1;
        }
        // SAFETY: as above; the bytes stay unchanged for the program's life.
        let bytes = unsafe { core::slice::from_raw_parts(pa as usize as *const u8, len) };
        core::str::from_utf8(bytes).unwrap_or("")
    }
}
