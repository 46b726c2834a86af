//! Parsing of the kernel command line into the `beambake.*` settings.
//!
//! Owns: tokenising `/proc/cmdline` (whitespace-separated, double quotes
//! group), recognising `beambake.ip`, `beambake.gw`, `beambake.hostname`,
//! `beambake.debug` and `beambake.probe`, validating their values, and reporting unknown keys and
//! malformed values as diagnostics.
//!
//! Must not: read files, log, or perform any system call. It is a pure
//! function from a string to a [`Config`] plus [`Diagnostic`]s, so that a bad
//! parameter never stops the boot: the caller logs the diagnostics and goes on
//! without the setting.

use std::fmt;
use std::net::Ipv4Addr;

/// An IPv4 address with its prefix length (`10.0.120.101/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub ip: Option<Ipv4Cidr>,
    pub gw: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub debug: bool,
    /// `beambake.node=NAME@HOST`: the release's distribution node name for this VM
    /// (replaces the `-name`/`-sname` value of the launch spec: many VMs, one image).
    pub node: Option<String>,
    /// `beambake.mount=SOURCE,TARGET,FSTYPE[,DATA]`, repeatable: filesystems given at
    /// boot (a data disk, a host directory), mounted before the release starts.
    pub mounts: Vec<MountSpec>,
    /// `beambake.if=NAME`: the interface `beambake.ip` goes on (default eth0; User
    /// Mode Linux's vector NIC is vec0).
    pub iface: Option<String>,
    /// `beambake.peer=HOSTNAME,IP`, repeatable: the other VMs started from the same image,
    /// written to the hosts file so nodes with short names (`-sname`) reach each other.
    pub peers: Vec<(String, Ipv4Addr)>,
    /// `beambake.probe=TOKEN` (1..=64 letters or digits): the host's accelerator probe.
    /// The init prints [`probe_marker`] and powers off with [`PROBE_STATUS`], nothing else.
    pub probe: Option<String>,
}

/// The guest status a probe boot powers off with (qemu then exits with `(42 << 1) | 1`).
/// The host side (`builder/src/boot/accel.rs`) expects exactly this value.
pub const PROBE_STATUS: u8 = 42;

/// The console line (after `beambake-init: `) that proves a probe guest ran its init.
/// It differs from the `beambake.probe=TOKEN` text a kernel may echo.
pub fn probe_marker(token: &str) -> String {
    format!("probe {token} ok")
}

/// One `beambake.mount=` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub target: String,
    pub fstype: String,
    pub data: String,
}

/// Parses `SOURCE,TARGET,FSTYPE[,DATA]` (DATA may itself contain commas).
pub fn parse_mount(v: &str) -> Result<MountSpec, &'static str> {
    let mut it = v.splitn(4, ',');
    let (Some(source), Some(target), Some(fstype)) = (it.next(), it.next(), it.next()) else {
        return Err("want SOURCE,TARGET,FSTYPE[,DATA]");
    };
    if source.is_empty() || fstype.is_empty() {
        return Err("empty source or filesystem type");
    }
    if !target.starts_with('/') || target == "/" {
        return Err("the target must be an absolute path other than /");
    }
    Ok(MountSpec {
        source: source.to_string(),
        target: target.to_string(),
        fstype: fstype.to_string(),
        data: it.next().unwrap_or("").to_string(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    /// A `beambake.*` key we do not know (logged as a warning).
    UnknownKey(String),
    /// A known key whose value is unusable (logged as an error; the setting
    /// is dropped).
    Malformed {
        key: String,
        value: String,
        reason: &'static str,
    },
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnostic::UnknownKey(k) => write!(f, "unknown kernel parameter {k}, ignored"),
            Diagnostic::Malformed { key, value, reason } => {
                write!(f, "malformed {key}={value:?}: {reason}; setting ignored")
            }
        }
    }
}

const PREFIX: &str = "beambake.";

/// Split a kernel command line like the kernel does: on whitespace, with
/// double quotes grouping (and removed). Everything after a lone `--` is for
/// init's argv, not kernel parameters, and is dropped.
pub fn tokens(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut have = false;
    for c in cmdline.chars() {
        if c == '"' {
            in_quotes = !in_quotes;
            have = true;
        } else if c.is_whitespace() && !in_quotes {
            if have {
                out.push(std::mem::take(&mut cur));
                have = false;
            }
        } else {
            cur.push(c);
            have = true;
        }
    }
    if have {
        out.push(cur);
    }
    if let Some(i) = out.iter().position(|t| t == "--") {
        out.truncate(i);
    }
    out
}

pub fn parse(cmdline: &str) -> (Config, Vec<Diagnostic>) {
    let mut cfg = Config::default();
    let mut diags = Vec::new();
    for tok in tokens(cmdline) {
        let Some(rest) = tok.strip_prefix(PREFIX) else {
            continue;
        };
        let (name, value) = match rest.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (rest, None),
        };
        let key = format!("{PREFIX}{name}");
        let bad = |value: &str, reason| Diagnostic::Malformed {
            key: key.clone(),
            value: value.to_string(),
            reason,
        };
        match name {
            "ip" => match value.map(parse_cidr) {
                Some(Ok(c)) => cfg.ip = Some(c),
                Some(Err(reason)) => diags.push(bad(value.unwrap_or(""), reason)),
                None => diags.push(bad("", "missing value (want ADDR/PREFIX)")),
            },
            "gw" => match value.map(|v| v.parse::<Ipv4Addr>()) {
                Some(Ok(a)) => cfg.gw = Some(a),
                Some(Err(_)) => {
                    diags.push(bad(value.unwrap_or(""), "not an IPv4 address"));
                }
                None => diags.push(bad("", "missing value (want an IPv4 address)")),
            },
            "hostname" => match value {
                Some(v) => match check_hostname(v) {
                    Ok(()) => cfg.hostname = Some(v.to_string()),
                    Err(reason) => diags.push(bad(v, reason)),
                },
                None => diags.push(bad("", "missing value")),
            },
            "node" => match value {
                Some(v) if v.contains('@') && !v.starts_with('@') && !v.ends_with('@') => {
                    cfg.node = Some(v.to_string())
                }
                Some(v) => diags.push(bad(v, "want NAME@HOST")),
                None => diags.push(bad("", "missing value (want NAME@HOST)")),
            },
            "if" => match value {
                Some(v)
                    if !v.is_empty()
                        && v.len() < 16
                        && v.chars().all(|c| c.is_ascii_alphanumeric()) =>
                {
                    cfg.iface = Some(v.to_string())
                }
                _ => diags.push(bad(value.unwrap_or(""), "want an interface name")),
            },
            "mount" => match value.map(parse_mount) {
                Some(Ok(m)) => cfg.mounts.push(m),
                Some(Err(reason)) => diags.push(bad(value.unwrap_or(""), reason)),
                None => diags.push(bad("", "missing value (want SOURCE,TARGET,FSTYPE)")),
            },
            "peer" => match value.map(parse_peer) {
                Some(Ok(p)) => cfg.peers.push(p),
                Some(Err(reason)) => diags.push(bad(value.unwrap_or(""), reason)),
                None => diags.push(bad("", "missing value (want HOSTNAME,IP)")),
            },
            "probe" => match value {
                Some(v)
                    if !v.is_empty()
                        && v.len() <= 64
                        && v.chars().all(|c| c.is_ascii_alphanumeric()) =>
                {
                    cfg.probe = Some(v.to_string())
                }
                _ => diags.push(bad(value.unwrap_or(""), "want 1 to 64 letters or digits")),
            },
            "debug" => match value.map(parse_bool) {
                // A bare `beambake.debug` turns debugging on.
                None => cfg.debug = true,
                Some(Some(b)) => cfg.debug = b,
                Some(None) => diags.push(bad(value.unwrap_or(""), "want 0 or 1")),
            },
            _ => diags.push(Diagnostic::UnknownKey(key)),
        }
    }
    (cfg, diags)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

pub fn parse_cidr(v: &str) -> Result<Ipv4Cidr, &'static str> {
    let (a, p) = v
        .split_once('/')
        .ok_or("missing /PREFIX (want ADDR/PREFIX)")?;
    let addr: Ipv4Addr = a.parse().map_err(|_| "not an IPv4 address")?;
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err("prefix is not a number");
    }
    let prefix: u8 = p.parse().map_err(|_| "prefix out of range 0..=32")?;
    if prefix > 32 {
        return Err("prefix out of range 0..=32");
    }
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() {
        return Err("not a usable host address");
    }
    Ok(Ipv4Cidr { addr, prefix })
}

/// RFC 1123-ish: 1..=64 bytes (the kernel's limit), labels of letters,
/// digits and `-`, separated by dots, not starting or ending with `-`.
/// `HOSTNAME,IP` of a `beambake.peer=` entry.
fn parse_peer(v: &str) -> Result<(String, Ipv4Addr), &'static str> {
    let (host, ip) = v.split_once(',').ok_or("want HOSTNAME,IP")?;
    check_hostname(host)?;
    let ip = ip
        .parse()
        .map_err(|_| "not an IPv4 address after the comma")?;
    Ok((host.to_string(), ip))
}

pub fn check_hostname(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("empty hostname");
    }
    if v.len() > 64 {
        return Err("longer than 64 bytes");
    }
    for label in v.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label may not start or end with '-'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPICAL: &str = "console=ttyS0 quiet panic=-1 reboot=t \
        beambake.ip=10.0.120.101/24 beambake.gw=10.0.120.100 beambake.hostname=echo\n";

    #[test]
    fn typical_line() {
        let (cfg, diags) = parse(TYPICAL);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(
            cfg.ip,
            Some(Ipv4Cidr {
                addr: Ipv4Addr::new(10, 0, 120, 101),
                prefix: 24
            })
        );
        assert_eq!(cfg.gw, Some(Ipv4Addr::new(10, 0, 120, 100)));
        assert_eq!(cfg.hostname.as_deref(), Some("echo"));
        assert!(!cfg.debug);
    }

    #[test]
    fn empty_and_foreign_params() {
        assert_eq!(parse(""), (Config::default(), vec![]));
        let (cfg, diags) = parse("root=/dev/vda ro foo.bar=1 beambakeip=1");
        assert_eq!(cfg, Config::default());
        assert!(diags.is_empty());
    }

    #[test]
    fn debug_forms() {
        assert!(parse("beambake.debug=1").0.debug);
        assert!(parse("beambake.debug").0.debug);
        assert!(!parse("beambake.debug=0").0.debug);
        let (cfg, diags) = parse("beambake.debug=maybe");
        assert!(!cfg.debug);
        assert_eq!(
            diags,
            vec![Diagnostic::Malformed {
                key: "beambake.debug".into(),
                value: "maybe".into(),
                reason: "want 0 or 1"
            }]
        );
    }

    #[test]
    fn unknown_key_is_a_warning_and_rest_still_parsed() {
        let (cfg, diags) = parse("beambake.colour=blue beambake.hostname=h1");
        assert_eq!(cfg.hostname.as_deref(), Some("h1"));
        assert_eq!(
            diags,
            vec![Diagnostic::UnknownKey("beambake.colour".into())]
        );
        assert_eq!(
            diags[0].to_string(),
            "unknown kernel parameter beambake.colour, ignored"
        );
    }

    #[test]
    fn malformed_values_name_key_and_value() {
        for bad in [
            "beambake.ip=10.0.0.1",
            "beambake.ip=10.0.0.1/33",
            "beambake.ip=10.0.0.1/",
            "beambake.ip=10.0.0.1/+8",
            "beambake.ip=10.0.0/24",
            "beambake.ip=0.0.0.0/0",
            "beambake.ip=fe80::1/64",
            "beambake.ip",
            "beambake.gw=10.0.0.256",
            "beambake.gw=",
            "beambake.hostname=",
            "beambake.hostname=a_b",
            "beambake.hostname=-ab",
            "beambake.hostname=a..b",
        ] {
            let (cfg, diags) = parse(bad);
            assert_eq!(cfg, Config::default(), "{bad}");
            assert_eq!(diags.len(), 1, "{bad}");
            let msg = diags[0].to_string();
            let key = bad.split('=').next().unwrap_or(bad);
            assert!(msg.contains(key), "{msg} should name {key}");
            if let Some((_, v)) = bad.split_once('=') {
                assert!(msg.contains(&format!("{v:?}")), "{msg} should quote {v}");
            }
        }
    }

    #[test]
    fn node_and_mounts() {
        let (cfg, diags) = parse(
            "beambake.node=echo@10.0.0.2 beambake.mount=/dev/ubdb,/data,ext4 \
             beambake.mount=none,/srv,hostfs,/host/dir,with,commas beambake.mount=x,rel,ext4 \
             beambake.node=bad",
        );
        assert_eq!(cfg.node.as_deref(), Some("echo@10.0.0.2"));
        assert_eq!(cfg.mounts.len(), 2);
        assert_eq!(cfg.mounts[0].target, "/data");
        assert_eq!(cfg.mounts[1].data, "/host/dir,with,commas");
        assert_eq!(diags.len(), 2, "{diags:?}");
    }

    #[test]
    fn peers_are_repeatable_and_checked() {
        let (cfg, diags) = parse(
            "beambake.peer=tpl-2,10.0.0.3 beambake.peer=tpl-3,10.0.0.4 \
             beambake.peer=bad_host,10.0.0.5 beambake.peer=tpl-4 beambake.peer=tpl-5,10.0.0",
        );
        assert_eq!(
            cfg.peers,
            [
                ("tpl-2".to_string(), Ipv4Addr::new(10, 0, 0, 3)),
                ("tpl-3".to_string(), Ipv4Addr::new(10, 0, 0, 4)),
            ]
        );
        assert_eq!(diags.len(), 3, "{diags:?}");
    }

    #[test]
    fn long_hostname_rejected() {
        let long = "a".repeat(65);
        let (cfg, diags) = parse(&format!("beambake.hostname={long}"));
        assert_eq!(cfg.hostname, None);
        assert_eq!(diags.len(), 1);
        assert!(parse(&format!("beambake.hostname={}", "a".repeat(63)))
            .0
            .hostname
            .is_some());
    }

    #[test]
    fn netmask_from_prefix() {
        let m = |p| {
            Ipv4Cidr {
                addr: Ipv4Addr::new(10, 0, 0, 1),
                prefix: p,
            }
            .netmask()
        };
        assert_eq!(m(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(m(8), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(m(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(m(31), Ipv4Addr::new(255, 255, 255, 254));
        assert_eq!(m(32), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn quotes_and_double_dash() {
        assert_eq!(
            tokens("a \"b c\" d=\"e f\"  -- beambake.debug=1"),
            vec!["a", "b c", "d=e f"]
        );
        let (cfg, _) = parse("x -- beambake.debug=1");
        assert!(!cfg.debug);
    }

    #[test]
    fn probe_token() {
        let (cfg, diags) = parse("quiet beambake.probe=0123abcdEF");
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(cfg.probe.as_deref(), Some("0123abcdEF"));
        assert_eq!(probe_marker("0123abcdEF"), "probe 0123abcdEF ok");
        for bad in ["beambake.probe", "beambake.probe=", "beambake.probe=a-b"] {
            let (cfg, diags) = parse(bad);
            assert_eq!(cfg.probe, None, "{bad}");
            assert_eq!(diags.len(), 1, "{bad}");
        }
        let (cfg, _) = parse(&format!("beambake.probe={}", "a".repeat(65)));
        assert_eq!(cfg.probe, None);
    }

    #[test]
    fn last_value_wins() {
        let (cfg, diags) = parse("beambake.hostname=a beambake.hostname=b");
        assert!(diags.is_empty());
        assert_eq!(cfg.hostname.as_deref(), Some("b"));
    }
}
