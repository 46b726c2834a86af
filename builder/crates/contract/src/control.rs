//! The init's control line (`beambake.ctl=ttyS1`): a second serial line on which the
//! host (`beambake port`, driven by `beambake_vm` in Erlang) asks the init for what the
//! release cannot do itself — configure the network at run time, ping, power off cleanly.
//!
//! One request per line, `ID VERB ARGS...` (ID: 1 to 18 digits, chosen by the host),
//! answered by one line `ID ok [TEXT]` or `ID error TEXT`:
//!
//! - `ID ifconfig ADDR/PREFIX [GW]`: address, netmask and (with GW) the default route of
//!   the interface, which is brought up; answers `ID ok ADDR/PREFIX`.
//! - `ID ping ADDR [TIMEOUT_MS]`: one ICMP echo (default timeout 1000 ms); answers
//!   `ID ok ADDR MICROSECONDS` or `ID error timeout`.
//! - `ID poweroff`: the release is stopped as on SIGTERM and the VM powers off with its
//!   status; answers `ID ok` first.
//! - `ID resync SECS.NANOS SEED`: what a guest restored from a snapshot needs: its wall
//!   clock stepped to the host's (`CLOCK_REALTIME` := SECS.NANOS since the epoch) and
//!   the kernel's random pool given SEED (64 hex digits, 32 bytes from the host's
//!   CSPRNG, credited as entropy) and its CRNG reseeded; answers `ID ok STEP_MS` (how far
//!   the clock moved).
//!
//! When the line is open the init says `0 ready` once. Anything else gets `ID error ...`
//! (`0 error ...` when not even an ID could be read).

use std::net::Ipv4Addr;

use crate::cmdline::{parse_cidr, Ipv4Cidr};

/// The serial line beambake wires as the control line (the second one: the first is the
/// console).
pub const CONTROL_TTY: &str = "ttyS1";

/// Default ping timeout.
pub const PING_TIMEOUT_MS: u64 = 1000;

/// What a request asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ifconfig {
        ip: Ipv4Cidr,
        gw: Option<Ipv4Addr>,
    },
    Ping {
        addr: Ipv4Addr,
        timeout_ms: u64,
    },
    Poweroff,
    Resync {
        /// Since the Unix epoch.
        realtime: std::time::Duration,
        seed: [u8; SEED_BYTES],
    },
}

/// Bytes of entropy a `resync` carries.
pub const SEED_BYTES: usize = 32;

/// The `resync` request line.
pub fn resync_line(id: u64, realtime: std::time::Duration, seed: &[u8; SEED_BYTES]) -> String {
    let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{id} resync {}.{:09} {hex}",
        realtime.as_secs(),
        realtime.subsec_nanos()
    )
}

fn parse_realtime(s: &str) -> Option<std::time::Duration> {
    let (secs, nanos) = s.split_once('.')?;
    if nanos.len() != 9 || !nanos.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(std::time::Duration::new(
        secs.parse().ok()?,
        nanos.parse().ok()?,
    ))
}

fn parse_seed(s: &str) -> Option<[u8; SEED_BYTES]> {
    if s.len() != 2 * SEED_BYTES {
        return None;
    }
    let mut seed = [0u8; SEED_BYTES];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(seed)
}

/// Parses one request line into its ID and request; an error is the reply line to send.
pub fn parse_request(line: &str) -> Result<(u64, Request), String> {
    let mut words = line.split_whitespace();
    let id = match words.next().map(|w| (w, w.parse::<u64>())) {
        Some((w, Ok(id))) if w.len() <= 18 && w.bytes().all(|b| b.is_ascii_digit()) => id,
        _ => return Err(error_line(0, "a request starts with a numeric id")),
    };
    let verb = words.next().unwrap_or("");
    let args: Vec<&str> = words.collect();
    let req = match (verb, args.as_slice()) {
        ("ifconfig", [cidr]) | ("ifconfig", [cidr, _]) => {
            let ip = parse_cidr(cidr).map_err(|e| error_line(id, &format!("{cidr}: {e}")))?;
            let gw = match args.get(1) {
                None => None,
                Some(g) => Some(
                    g.parse::<Ipv4Addr>()
                        .map_err(|_| error_line(id, &format!("{g}: not an IPv4 address")))?,
                ),
            };
            Request::Ifconfig { ip, gw }
        }
        ("ping", [addr]) | ("ping", [addr, _]) => {
            let addr = addr
                .parse::<Ipv4Addr>()
                .map_err(|_| error_line(id, &format!("{addr}: not an IPv4 address")))?;
            let timeout_ms = match args.get(1) {
                None => PING_TIMEOUT_MS,
                Some(t) => t
                    .parse::<u64>()
                    .ok()
                    .filter(|t| (1..=60_000).contains(t))
                    .ok_or_else(|| error_line(id, &format!("{t}: want 1 to 60000 ms")))?,
            };
            Request::Ping { addr, timeout_ms }
        }
        ("poweroff", []) => Request::Poweroff,
        ("resync", [time, seed]) => Request::Resync {
            realtime: parse_realtime(time)
                .ok_or_else(|| error_line(id, &format!("{time}: want SECONDS.NANOSECONDS")))?,
            seed: parse_seed(seed).ok_or_else(|| {
                error_line(id, &format!("want {} hex digits of seed", 2 * SEED_BYTES))
            })?,
        },
        ("ifconfig" | "ping" | "poweroff" | "resync", _) => {
            return Err(error_line(id, &format!("{verb}: wrong arguments")))
        }
        _ => return Err(error_line(id, &format!("unknown request {verb:?}"))),
    };
    Ok((id, req))
}

/// `ID ok[ TEXT]`.
pub fn ok_line(id: u64, text: &str) -> String {
    if text.is_empty() {
        format!("{id} ok")
    } else {
        format!("{id} ok {text}")
    }
}

/// `ID error TEXT` (on one line).
pub fn error_line(id: u64, text: &str) -> String {
    format!("{id} error {}", text.replace(['\n', '\r'], " "))
}

/// The line the init writes when the control line is open.
pub fn ready_line() -> String {
    "0 ready".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse() {
        assert_eq!(
            parse_request("7 ifconfig 10.0.0.2/24 10.0.0.1").unwrap(),
            (
                7,
                Request::Ifconfig {
                    ip: Ipv4Cidr {
                        addr: Ipv4Addr::new(10, 0, 0, 2),
                        prefix: 24
                    },
                    gw: Some(Ipv4Addr::new(10, 0, 0, 1))
                }
            )
        );
        assert_eq!(
            parse_request("8 ping 10.0.0.3").unwrap(),
            (
                8,
                Request::Ping {
                    addr: Ipv4Addr::new(10, 0, 0, 3),
                    timeout_ms: PING_TIMEOUT_MS
                }
            )
        );
        assert_eq!(parse_request(" 9 poweroff\r").unwrap().1, Request::Poweroff);
        let seed: [u8; SEED_BYTES] = std::array::from_fn(|i| i as u8 * 7);
        let t = std::time::Duration::new(1_780_000_000, 5);
        let line = resync_line(4, t, &seed);
        assert!(
            line.starts_with("4 resync 1780000000.000000005 00070e15"),
            "{line}"
        );
        assert_eq!(
            parse_request(&line).unwrap(),
            (4, Request::Resync { realtime: t, seed })
        );
    }

    #[test]
    fn bad_requests_get_error_lines() {
        for (line, want) in [
            ("x ping 1.2.3.4", "0 error a request starts"),
            ("", "0 error"),
            ("3 dance", "3 error unknown request \"dance\""),
            ("3 ping", "3 error ping: wrong arguments"),
            ("3 ping 1.2.3", "3 error 1.2.3: not an IPv4 address"),
            ("3 ping 1.2.3.4 0", "3 error 0: want 1 to 60000 ms"),
            ("3 resync 12 00", "3 error 12: want SECONDS.NANOSECONDS"),
            ("3 resync 12.000000001 0g", "3 error want 64 hex digits"),
            ("3 resync", "3 error resync: wrong arguments"),
            ("3 ifconfig 10.0.0.2", "3 error 10.0.0.2:"),
            ("3 ifconfig 10.0.0.2/24 gw", "3 error gw: not an IPv4"),
            ("3 poweroff now", "3 error poweroff: wrong arguments"),
        ] {
            let e = parse_request(line).unwrap_err();
            assert!(e.starts_with(want), "{line:?}: {e}");
        }
        assert_eq!(error_line(4, "a\nb"), "4 error a b");
        assert_eq!(ok_line(4, ""), "4 ok");
    }
}
