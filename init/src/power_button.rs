//! The power button: on machine pc, qemu's `system_powerdown` (what libvirt's shutdown
//! does) presses the ACPI power button; the `button` module turns the press into a
//! `KEY_POWER` input event and `evdev` gives its device a `/dev/input/event*` node (in
//! devtmpfs). A thread watches every device that can report `KEY_POWER` and, on the first
//! press, asks for the shutdown a SIGTERM to init asks for.
//!
//! Owns: finding those devices (a short wait for their nodes), reading and decoding
//! their events, and the thread. Must not: decide how the VM stops
//! (`supervise::request_stop` does), ask more than once, touch the console beyond its log
//! lines, treat a machine without a power button as a problem (microvm and UML have none:
//! the thread just ends), or receive the signals init handles (its thread blocks them).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::log::{debug, error, info};

/// Where devtmpfs puts the nodes of input devices.
const INPUT_DIR: &str = "/dev/input";
/// Event type of keys and buttons (`linux/input-event-codes.h`).
const EV_KEY: u16 = 0x01;
/// The power key's code (`linux/input-event-codes.h`).
const KEY_POWER: u16 = 116;
/// The highest key code: the size of a device's key bitmap.
const KEY_MAX: usize = 0x2ff;
/// An `EV_KEY` event's value for a press (0 is a release, 2 a repeat).
const PRESSED: i32 = 1;
/// How long the nodes may take to appear once the modules are loaded.
const NODES_WITHIN: Duration = Duration::from_secs(2);

/// The size of `struct input_event`: a `struct timeval`, then type (u16), code (u16) and
/// value (i32); 24 bytes on x86_64.
const TIMEVAL_SIZE: usize = std::mem::size_of::<libc::timeval>();
const EVENT_SIZE: usize = TIMEVAL_SIZE + 8;

/// Starts the thread watching the power button (call it once the modules are loaded).
pub fn start() {
    let spawned = std::thread::Builder::new()
        .name("power-button".into())
        .spawn(|| {
            crate::supervise::block_signals();
            if let Err(e) = watch() {
                error!("power button: {e} (a press will not stop the VM)");
            }
        });
    if let Err(e) = spawned {
        error!("cannot start the power button thread: {e}");
    }
}

fn watch() -> io::Result<()> {
    let buttons = find_buttons(Path::new(INPUT_DIR), NODES_WITHIN);
    if buttons.is_empty() {
        debug!("no power button (no input device reports KEY_POWER)");
        return Ok(());
    }
    for (path, _, name) in &buttons {
        debug!("power button: watching {} ({name})", path.display());
    }
    wait_for_press(buttons.into_iter().map(|(_, f, _)| f).collect())?;
    info!("power button: stopping");
    crate::supervise::request_stop();
    Ok(())
}

/// The input devices under `dir` that can report `KEY_POWER` (path, open file, name),
/// waiting up to `within` for at least one to appear.
fn find_buttons(dir: &Path, within: Duration) -> Vec<(PathBuf, File, String)> {
    let deadline = Instant::now() + within;
    loop {
        let found: Vec<_> = event_nodes(dir)
            .into_iter()
            .filter_map(|path| {
                let file = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| debug!("power button: cannot open {}: {e}", path.display()))
                    .ok()?;
                has_power_key(&file).then(|| {
                    let name = device_name(&file);
                    (path, file, name)
                })
            })
            .collect();
        if !found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `dir/event*`, sorted; none when `dir` does not exist.
fn event_nodes(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The `_IOR('E', nr, len)` request number of the evdev ioctls.
const fn eviocg(nr: u8, len: usize) -> u64 {
    const IOC_READ: u64 = 2;
    (IOC_READ << 30) | ((len as u64) << 16) | ((b'E' as u64) << 8) | nr as u64
}

/// `EVIOCGBIT(ev, len)`: the bitmap of the codes event type `ev` can report.
const fn eviocgbit(ev: u16, len: usize) -> u64 {
    eviocg(0x20 + ev as u8, len)
}

/// `EVIOCGNAME(len)`: the device's name.
const fn eviocgname(len: usize) -> u64 {
    eviocg(0x06, len)
}

/// Whether `bits` (an `EVIOCGBIT` bitmap) has bit `code`.
fn has_bit(bits: &[u8], code: u16) -> bool {
    bits.get(usize::from(code) / 8)
        .is_some_and(|b| b & (1 << (code % 8)) != 0)
}

/// Whether the device can report `KEY_POWER` (false when it cannot be asked).
fn has_power_key(dev: &File) -> bool {
    let mut bits = [0u8; KEY_MAX / 8 + 1];
    // SAFETY: EVIOCGBIT writes at most `bits.len()` bytes (its size is in the request).
    let n = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            eviocgbit(EV_KEY, bits.len()) as _,
            bits.as_mut_ptr(),
        )
    };
    n > 0 && has_bit(&bits, KEY_POWER)
}

/// The device's name, for the log ("?" when it cannot be had).
fn device_name(dev: &File) -> String {
    let mut buf = [0u8; 64];
    // SAFETY: EVIOCGNAME writes at most `buf.len()` bytes (its size is in the request).
    let n = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            eviocgname(buf.len()) as _,
            buf.as_mut_ptr(),
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return "?".into();
    };
    let name = &buf[..n.min(buf.len())];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
}

/// Waits until one of `devices` reports a press of the power key. Fails when none is
/// left to wait on.
fn wait_for_press(mut devices: Vec<File>) -> io::Result<()> {
    let mut buf = [0u8; EVENT_SIZE * 32];
    while !devices.is_empty() {
        let mut fds: Vec<libc::pollfd> = devices
            .iter()
            .map(|d| libc::pollfd {
                fd: d.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of its length.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut gone = Vec::new();
        for (i, pfd) in fds.iter().enumerate() {
            if pfd.revents == 0 {
                continue;
            }
            match devices[i].read(&mut buf) {
                Ok(n) if has_power_press(&buf[..n]) => return Ok(()),
                Ok(0) => gone.push(i),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    debug!("power button: reading an input device: {e}");
                    gone.push(i);
                }
            }
        }
        for i in gone.into_iter().rev() {
            devices.remove(i);
        }
    }
    Err(io::Error::other("every power button went away"))
}

/// Whether `events` (whole `struct input_event`s, as read(2) returns them) hold a press
/// of the power key.
fn has_power_press(events: &[u8]) -> bool {
    events.chunks_exact(EVENT_SIZE).any(|ev| {
        let field = |at: usize| -> Option<[u8; 2]> { ev.get(at..at + 2)?.try_into().ok() };
        let value = ev
            .get(TIMEVAL_SIZE + 4..TIMEVAL_SIZE + 8)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_ne_bytes);
        field(TIMEVAL_SIZE).map(u16::from_ne_bytes) == Some(EV_KEY)
            && field(TIMEVAL_SIZE + 2).map(u16::from_ne_bytes) == Some(KEY_POWER)
            && value == Some(PRESSED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `struct input_event` as the kernel writes it.
    fn event(ty: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0xa5u8; TIMEVAL_SIZE];
        e.extend_from_slice(&ty.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    const EV_SYN: u16 = 0;

    #[test]
    fn input_events_are_24_bytes_on_x86_64() {
        if cfg!(target_arch = "x86_64") {
            assert_eq!(EVENT_SIZE, 24);
        }
        assert_eq!(event(EV_KEY, KEY_POWER, 1).len(), EVENT_SIZE);
    }

    #[test]
    fn only_a_press_of_the_power_key_counts() {
        // What the ACPI button writes for one press: key down, sync, key up, sync.
        let press: Vec<u8> = [
            event(EV_KEY, KEY_POWER, 1),
            event(EV_SYN, 0, 0),
            event(EV_KEY, KEY_POWER, 0),
            event(EV_SYN, 0, 0),
        ]
        .concat();
        assert!(has_power_press(&press));
        assert!(has_power_press(&press[..EVENT_SIZE]));
        assert!(
            !has_power_press(&press[EVENT_SIZE..]),
            "a release is no press"
        );
        assert!(!has_power_press(&event(EV_KEY, KEY_POWER, 2)), "a repeat");
        assert!(!has_power_press(&event(EV_KEY, 115, 1)), "another key");
        assert!(!has_power_press(&event(0x04, KEY_POWER, 1)), "not EV_KEY");
        assert!(
            !has_power_press(&press[..EVENT_SIZE - 1]),
            "a partial event"
        );
        assert!(!has_power_press(&[]));
        let late: Vec<u8> = [event(EV_SYN, 0, 0), event(EV_KEY, KEY_POWER, 1)].concat();
        assert!(has_power_press(&late));
    }

    #[test]
    fn evdev_requests_and_bitmaps() {
        // As <linux/input.h> defines them (strace shows these numbers).
        assert_eq!(eviocgname(256), 0x8100_4506);
        assert_eq!(eviocgbit(EV_KEY, KEY_MAX / 8 + 1), 0x8060_4521);
        let mut bits = [0u8; KEY_MAX / 8 + 1];
        assert!(!has_bit(&bits, KEY_POWER));
        bits[14] = 1 << 4;
        assert!(has_bit(&bits, KEY_POWER));
        assert!(!has_bit(&bits, KEY_POWER + 1));
        assert!(!has_bit(&bits[..10], KEY_POWER), "a short bitmap");
    }

    #[test]
    fn no_input_dir_means_no_button() {
        let missing = Path::new("/nonexistent/beambake-test/input");
        assert!(event_nodes(missing).is_empty());
        assert!(find_buttons(missing, Duration::ZERO).is_empty());
    }
}
