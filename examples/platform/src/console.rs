//! Serial console: PL011 at 0x0900_0000 on aarch64 `virt`, COM1 (16550 at I/O
//! port 0x3F8) on x86_64 `q35`. Output only.
//!
//! Use [`print!`](crate::print) / [`println!`](crate::println). Output goes to
//! the serial port QEMU connects to `-serial stdio`. A line starting with
//! `demo: ` is picked up by `cargo xtask demo` (see [`crate::demo`]).

use core::fmt::{self, Write};

/// A handle to the serial console. It has no state, so any number may exist;
/// the examples are single-threaded and run with interrupts masked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Console;

impl Console {
    /// Writes one byte, translating `\n` to `\r\n`.
    pub fn put_byte(self, byte: u8) {
        if byte == b'\n' {
            crate::arch::console_putc(b'\r');
        }
        crate::arch::console_putc(byte);
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            self.put_byte(byte);
        }
        Ok(())
    }
}

/// Implementation detail of [`print!`](crate::print); prints formatted text.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    // The console never fails; a formatting error from a Display impl just
    // truncates the output.
    let _ = Console.write_fmt(args);
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!($($arg)*))
    };
}

/// Prints to the serial console, with a newline.
#[macro_export]
macro_rules! println {
    () => {
        $crate::console::_print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::console::_print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
