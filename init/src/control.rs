//! The control line (`beambake.ctl=ttyS1`, protocol in `beambake_contract::control`): a
//! thread that answers the host's requests on a second serial line while the release
//! runs — `ifconfig` (address, netmask, default route), `ping` (one ICMP echo from a raw
//! socket), `poweroff` (the shutdown SIGTERM asks for) and `resync` (after a restore from
//! a snapshot: the wall clock stepped, the random pool fed and the CRNG reseeded).
//!
//! Owns: the line's termios (raw: no echo, no line editing), the ICMP echo, and the
//! thread. Must not: touch the console, decide what is fatal (a control line that fails
//! is logged and given up; the release runs on), or receive the signals init handles
//! (its thread blocks them all).

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use beambake_contract::cmdline::Ipv4Cidr;
use beambake_contract::control::{self, Request};

use crate::log::{debug, error};
use crate::net;

/// Starts the thread serving `/dev/TTY`; `iface` is the interface `ifconfig` configures.
pub fn start(tty: &str, iface: &str) {
    let path = format!("/dev/{tty}");
    let iface = iface.to_string();
    let spawned = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            crate::supervise::block_signals();
            if let Err(e) = serve(&path, &iface) {
                error!("control line {path}: {e} (no more control requests)");
            }
        });
    if let Err(e) = spawned {
        error!("cannot start the control line thread: {e}");
    }
}

fn serve(path: &str, iface: &str) -> io::Result<()> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    make_raw(&tty)?;
    let mut out = tty.try_clone()?;
    writeln!(out, "{}", control::ready_line())?;
    debug!("control line on {path}");
    let mut lines = BufReader::new(tty);
    let mut line = Vec::new();
    loop {
        line.clear();
        if lines.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        let reply = match control::parse_request(&text) {
            Err(reply) => reply,
            Ok((id, Request::Poweroff)) => {
                writeln!(out, "{}", control::ok_line(id, ""))?;
                crate::supervise::request_stop();
                continue;
            }
            Ok((id, req)) => match handle(iface, &req) {
                Ok(text) => control::ok_line(id, &text),
                Err(e) => control::error_line(id, &e),
            },
        };
        writeln!(out, "{reply}")?;
    }
}

fn handle(iface: &str, req: &Request) -> Result<String, String> {
    match *req {
        Request::Ifconfig { ip, gw } => ifconfig(iface, ip, gw)
            .map(|()| ip.to_string())
            .map_err(|e| format!("{iface}: {e}")),
        Request::Ping { addr, timeout_ms } => match ping(addr, Duration::from_millis(timeout_ms)) {
            Ok(Some(rtt)) => Ok(format!("{addr} {}", rtt.as_micros())),
            Ok(None) => Err("timeout".into()),
            Err(e) => Err(e.to_string()),
        },
        Request::Poweroff => Ok(String::new()),
        Request::Resync { realtime, seed } => resync(realtime, &seed)
            .map(|step_ms| step_ms.to_string())
            .map_err(|e| e.to_string()),
    }
}

/// Steps `CLOCK_REALTIME` to `realtime`, credits `seed` to the random pool
/// (`RNDADDENTROPY`) and reseeds the CRNG (`RNDRESEEDCRNG`); returns how far the clock
/// moved, in ms (negative: backwards).
fn resync(realtime: Duration, seed: &[u8; control::SEED_BYTES]) -> io::Result<i64> {
    let mut before = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let ts = libc::timespec {
        tv_sec: realtime.as_secs() as libc::time_t,
        tv_nsec: realtime.subsec_nanos() as libc::c_long,
    };
    // SAFETY: clock_gettime/clock_settime with valid timespecs.
    unsafe {
        if libc::clock_gettime(libc::CLOCK_REALTIME, &mut before) != 0
            || libc::clock_settime(libc::CLOCK_REALTIME, &ts) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    // time_t and c_long are i64 on the init's one platform (x86_64 Linux).
    let step_ms = (ts.tv_sec - before.tv_sec) * 1000 + (ts.tv_nsec - before.tv_nsec) / 1_000_000;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    #[repr(C)]
    struct PoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; control::SEED_BYTES],
    }
    let info = PoolInfo {
        entropy_count: (control::SEED_BYTES * 8) as libc::c_int,
        buf_size: control::SEED_BYTES as libc::c_int,
        buf: *seed,
    };
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    let random = OpenOptions::new().write(true).open("/dev/urandom")?;
    // SAFETY: the ioctls take a rand_pool_info and nothing, on an open random device.
    unsafe {
        if libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, &info) != 0
            || libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(step_ms)
}

fn ifconfig(iface: &str, ip: Ipv4Cidr, gw: Option<Ipv4Addr>) -> io::Result<()> {
    let sock = net::Sock::new()?;
    // Its driver may still be probing when the first request comes.
    if !sock.wait_for(iface, Duration::from_secs(5), Duration::from_millis(10))? {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no such interface (did not appear within 5 s)",
        ));
    }
    sock.set_addr(iface, ip.addr)?;
    sock.set_netmask(iface, ip.netmask())?;
    sock.up(iface)?;
    if let Some(gw) = gw {
        match sock.add_default_route(gw) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            r => r?,
        }
    }
    Ok(())
}

/// No echo, no line editing, no CR/LF translation: lines pass as they are.
fn make_raw(tty: &File) -> io::Result<()> {
    // SAFETY: a zeroed termios is a valid out-buffer for tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and termios pointer.
    if unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `t` came from tcgetattr.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: valid fd and termios.
    if unsafe { libc::tcsetattr(tty.as_raw_fd(), libc::TCSANOW, &t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request with `id`, `seq` and a 32-byte payload.
fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0u8..32).map(|i| b'a' + i % 26));
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// Whether `packet` (IPv4 header + ICMP, as a raw socket reads it) is the echo reply to
/// (`id`, `seq`) from `from`.
fn is_reply(packet: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let ihl = usize::from(first & 0x0f) * 4;
    let (Some(src), Some(icmp)) = (packet.get(12..16), packet.get(ihl..ihl + 8)) else {
        return false;
    };
    Ipv4Addr::new(src[0], src[1], src[2], src[3]) == from
        && icmp[0] == 0
        && u16::from_be_bytes([icmp[4], icmp[5]]) == id
        && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
}

/// One ICMP echo to `addr`: the round trip, or `None` after `timeout`.
fn ping(addr: Ipv4Addr, timeout: Duration) -> io::Result<Option<Duration>> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    static SEQ: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = 0xbeb0;
    let req = echo_request(id, seq);
    let dest = crate::ifreq::sockaddr_v4(addr);
    let started = Instant::now();
    // SAFETY: valid buffer and sockaddr of the given length.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            &dest,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1500];
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Ok(None);
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        // SAFETY: valid buffer of its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if is_reply(&buf[..n as usize], addr, id, seq) {
            return Ok(Some(started.elapsed()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_a_valid_checksum() {
        let p = echo_request(0xbeb0, 7);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(&p[4..8], &[0xbe, 0xb0, 0, 7]);
    }

    #[test]
    fn replies_are_matched_by_source_id_and_seq() {
        let mut pkt = vec![0x45u8; 20];
        pkt[12..16].copy_from_slice(&[10, 0, 0, 3]);
        pkt.extend_from_slice(&[0, 0, 0, 0, 0xbe, 0xb0, 0, 7]);
        let from = Ipv4Addr::new(10, 0, 0, 3);
        assert!(is_reply(&pkt, from, 0xbeb0, 7));
        assert!(!is_reply(&pkt, from, 0xbeb0, 8));
        assert!(!is_reply(&pkt, Ipv4Addr::new(10, 0, 0, 4), 0xbeb0, 7));
        assert!(!is_reply(&pkt[..24], from, 0xbeb0, 7));
        assert!(!is_reply(&[], from, 0xbeb0, 7));
    }
}
