//! qemu's exit device: the init writes the guest's status to an I/O port, qemu (with
//! [`QEMU_DEVICE`]) exits with `(status << 1) | 1`, and the host reads the status back.
//!
//! Owns: the port, the device's qemu arguments, and the two mappings.
//! Must not: write ports (the init) or start qemu (the builder).

/// The I/O port of qemu's isa-debug-exit device.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// qemu's `-device` value for that exit device.
pub const QEMU_DEVICE: &str = "isa-debug-exit,iobase=0xf4,iosize=0x04";

/// qemu's exit status when the guest writes `status` to [`DEBUG_EXIT_PORT`].
pub fn qemu_exit_status(status: u8) -> i32 {
    (i32::from(status) << 1) | 1
}

/// The guest's status from qemu's exit status; `None` when qemu ended another way (an
/// even status: qemu's own error or exit).
pub fn guest_status(qemu_code: Option<i32>) -> Option<i32> {
    match qemu_code {
        Some(c) if c & 1 == 1 => Some(c >> 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        assert_eq!(qemu_exit_status(crate::console::PROBE_STATUS), 85);
        for s in [0u8, 1, 3, 42, 255] {
            assert_eq!(guest_status(Some(qemu_exit_status(s))), Some(i32::from(s)));
        }
        assert_eq!(guest_status(Some(0)), None);
        assert_eq!(guest_status(None), None);
        assert!(QEMU_DEVICE.contains(&format!("iobase={DEBUG_EXIT_PORT:#x},")));
    }
}
