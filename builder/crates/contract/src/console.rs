//! The init's console lines that the host reads: every line the init prints starts with
//! [`LOG_PREFIX`]; the power-off line carries the guest's exit status (User Mode Linux
//! has no exit device: the host reads the status there); the accelerator probe's marker
//! proves that a probe guest ran its init.
//!
//! Owns: the text of those lines, formatting them and parsing them back.
//! Must not: print anything (the init's log does) or read consoles (the builder does).

/// What the init puts before every line it prints.
pub const LOG_PREFIX: &str = "beambake-init: ";

/// The power-off message without its status (printed after [`LOG_PREFIX`]).
const POWER_OFF: &str = "power off, status ";

/// The message (after [`LOG_PREFIX`]) the init prints just before it powers off with
/// `status`.
pub fn power_off_message(status: u8) -> String {
    format!("{POWER_OFF}{status}")
}

/// The whole console line of [`power_off_message`].
pub fn power_off_line(status: u8) -> String {
    format!("{LOG_PREFIX}{}", power_off_message(status))
}

/// The status of a power-off line: the line holds [`power_off_line`] (anything may come
/// before it, e.g. a kernel's timestamp; only whitespace after it). `None` for any other
/// line.
pub fn parse_power_off_line(line: &str) -> Option<u8> {
    line.match_indices(LOG_PREFIX).find_map(|(i, _)| {
        line[i + LOG_PREFIX.len()..]
            .strip_prefix(POWER_OFF)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// The guest status a probe boot powers off with (qemu then exits with
/// [`crate::exit::qemu_exit_status`]`(42)`, i.e. 85).
pub const PROBE_STATUS: u8 = 42;

/// The message (after [`LOG_PREFIX`]) that proves a probe guest ran its init. It differs
/// from the `beambake.probe=TOKEN` text a kernel may echo.
pub fn probe_marker(token: &str) -> String {
    format!("probe {token} ok")
}

/// The whole console line of [`probe_marker`].
pub fn probe_marker_line(token: &str) -> String {
    format!("{LOG_PREFIX}{}", probe_marker(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_off_lines_are_pinned_and_round_trip() {
        assert_eq!(power_off_line(7), "beambake-init: power off, status 7");
        assert_eq!(power_off_message(0), "power off, status 0");
        for s in [0, 1, 42, 255] {
            assert_eq!(parse_power_off_line(&power_off_line(s)), Some(s));
        }
        assert_eq!(
            parse_power_off_line("[  1.5] beambake-init: power off, status 3\r"),
            Some(3)
        );
        for other in [
            "",
            "Kernel panic",
            "beambake-init: power off, status ",
            "beambake-init: power off, status x",
            "beambake-init: power off, status 256",
            "power off, status 3",
            "beambake-init: fatal: power off, status 3",
        ] {
            assert_eq!(parse_power_off_line(other), None, "{other:?}");
        }
    }

    #[test]
    fn probe_marker_is_pinned() {
        assert_eq!(probe_marker("0123abcdEF"), "probe 0123abcdEF ok");
        assert_eq!(probe_marker_line("t1"), "beambake-init: probe t1 ok");
        assert_eq!(PROBE_STATUS, 42);
    }
}
