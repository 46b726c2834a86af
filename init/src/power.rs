//! Ending the VM with an exit code. Under QEMU with
//! `-device isa-debug-exit,iobase=0xf4,iosize=0x04`, writing C to port 0xf4
//! makes QEMU exit with status `(C << 1) | 1`. Without that device we fall
//! back to `reboot(RB_POWER_OFF)`, then `reboot(RB_AUTOBOOT)`, then sleep
//! forever.
//!
//! Owns: the port write (the only inline asm), the fallbacks, and never
//! returning.
//!
//! Must not: kill processes or sync (the supervisor and fatal path do that
//! first), log anything but a failure, or return: PID 1 exiting panics the
//! kernel.

use std::time::Duration;

use beambake_contract::console::power_off_message;
use beambake_contract::exit::DEBUG_EXIT_PORT;

use crate::log::error;

/// Power the machine off with exit code `code`. Never returns.
pub fn power_off(code: u8) -> ! {
    // For VMs without an exit device (User Mode Linux): the host reads the status from
    // this line on the console.
    crate::log::info!("{}", power_off_message(code));
    debug_exit(code);
    // SAFETY: reboot(2) with the documented magic commands; we are PID 1.
    unsafe {
        if libc::reboot(libc::RB_POWER_OFF) < 0 {
            error!("reboot(RB_POWER_OFF): {}", std::io::Error::last_os_error());
        }
        if libc::reboot(libc::RB_AUTOBOOT) < 0 {
            error!("reboot(RB_AUTOBOOT): {}", std::io::Error::last_os_error());
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Write `code` to QEMU's isa-debug-exit port. Returns only if we are still
/// running 100 ms later (device absent) or the port is not accessible.
#[cfg(target_arch = "x86_64")]
fn debug_exit(code: u8) {
    // SAFETY: ioperm(DEBUG_EXIT_PORT, 4, 1) only grants this process access to four
    // I/O ports; it fails harmlessly without CAP_SYS_RAWIO.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioperm,
            libc::c_ulong::from(DEBUG_EXIT_PORT),
            4 as libc::c_ulong,
            1 as libc::c_int,
        )
    };
    if rc != 0 {
        return;
    }
    // SAFETY: the port is ours by the ioperm above. On a machine without
    // the device the write goes nowhere.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") DEBUG_EXIT_PORT, in("al") code, options(nomem, nostack, preserves_flags));
    }
    std::thread::sleep(Duration::from_millis(100));
}

#[cfg(not(target_arch = "x86_64"))]
fn debug_exit(_code: u8) {}
