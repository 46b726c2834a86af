//! The `beambake.*` kernel parameters: how the builder tells one VM of an image its
//! network, name, mounts and mode, and how the init reads them from `/proc/cmdline`.
//!
//! Owns: every key ([`Key`]), the typed values ([`GuestParams`]), their text form
//! ([`GuestParams::to_cmdline_args`]), tokenising a command line like the kernel
//! (whitespace-separated, double quotes group, nothing after a lone `--`), and parsing
//! and validating the values: strictly ([`GuestParams::parse`]) or, for the init, so that
//! a bad parameter never stops the boot ([`GuestParams::parse_lenient`]: the setting is
//! dropped and a [`Diagnostic`] says why).
//!
//! Must not: read files, log, or apply anything: the init decides what a setting does.

use std::fmt;
use std::net::Ipv4Addr;

use crate::ContractError;

/// What every key starts with.
pub const PREFIX: &str = "beambake.";

/// The interface `beambake.ip` goes on without `beambake.if`.
pub const DEFAULT_IFACE: &str = "eth0";

/// Every `beambake.*` key, in the order [`GuestParams::to_cmdline_args`] writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `beambake.if=NAME`: the interface `beambake.ip` goes on (default
    /// [`DEFAULT_IFACE`]; User Mode Linux's vector NIC is vec0).
    If,
    /// `beambake.ip=ADDR/PREFIX`.
    Ip,
    /// `beambake.gw=ADDR`: the default route.
    Gw,
    /// `beambake.hostname=NAME`.
    Hostname,
    /// `beambake.peer=HOSTNAME,IP`, repeatable.
    Peer,
    /// `beambake.node=NAME@HOST`.
    Node,
    /// `beambake.mount=SOURCE,TARGET,FSTYPE[,DATA]`, repeatable.
    Mount,
    /// `beambake.debug[=0|1]`.
    Debug,
    /// `beambake.probe=TOKEN`.
    Probe,
    /// `beambake.ctl=TTY`: the init's control line (`ttyS1`), for `beambake port`.
    Ctl,
}

impl Key {
    pub const ALL: [Key; 10] = [
        Key::If,
        Key::Ip,
        Key::Gw,
        Key::Hostname,
        Key::Peer,
        Key::Node,
        Key::Mount,
        Key::Debug,
        Key::Probe,
        Key::Ctl,
    ];

    /// The name after [`PREFIX`].
    pub fn name(self) -> &'static str {
        match self {
            Key::If => "if",
            Key::Ip => "ip",
            Key::Gw => "gw",
            Key::Hostname => "hostname",
            Key::Peer => "peer",
            Key::Node => "node",
            Key::Mount => "mount",
            Key::Debug => "debug",
            Key::Probe => "probe",
            Key::Ctl => "ctl",
        }
    }

    pub fn from_name(name: &str) -> Option<Key> {
        Key::ALL.into_iter().find(|k| k.name() == name)
    }

    /// `beambake.NAME=VALUE`.
    pub fn format(self, value: impl fmt::Display) -> String {
        format!("{PREFIX}{}={value}", self.name())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.name())
    }
}

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

/// One `beambake.mount=` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub target: String,
    pub fstype: String,
    /// Filesystem options (`""`: none); may contain commas.
    pub data: String,
}

/// `SOURCE,TARGET,FSTYPE[,DATA]`.
impl fmt::Display for MountSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{},{}", self.source, self.target, self.fstype)?;
        if !self.data.is_empty() {
            write!(f, ",{}", self.data)?;
        }
        Ok(())
    }
}

/// The `beambake.*` settings of one VM. Absent keys are `None`, empty or `false`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestParams {
    /// `beambake.if=NAME`.
    pub iface: Option<String>,
    /// `beambake.ip=ADDR/PREFIX`.
    pub ip: Option<Ipv4Cidr>,
    /// `beambake.gw=ADDR`.
    pub gw: Option<Ipv4Addr>,
    /// `beambake.hostname=NAME`.
    pub hostname: Option<String>,
    /// `beambake.peer=HOSTNAME,IP`, repeatable: the other VMs started from the same image,
    /// written to the hosts file so nodes with short names (`-sname`) reach each other.
    pub peers: Vec<(String, Ipv4Addr)>,
    /// `beambake.node=NAME@HOST`: the release's distribution node name for this VM
    /// (replaces the `-name`/`-sname` value of the launch spec: many VMs, one image).
    pub node: Option<String>,
    /// `beambake.mount=SOURCE,TARGET,FSTYPE[,DATA]`, repeatable: filesystems given at
    /// boot (a data disk, a host directory), mounted before the release starts.
    pub mounts: Vec<MountSpec>,
    /// `beambake.debug`: the init's debug lines.
    pub debug: bool,
    /// `beambake.probe=TOKEN` (1..=64 letters or digits): the host's accelerator probe.
    /// The init prints [`crate::console::probe_marker`] and powers off with
    /// [`crate::console::PROBE_STATUS`], nothing else.
    pub probe: Option<String>,
    /// `beambake.ctl=TTY` (a serial line's name, `ttyS1`): the init answers control
    /// requests on `/dev/TTY` ([`crate::control`]) while the release runs.
    pub ctl: Option<String>,
}

impl GuestParams {
    /// The parameters as kernel command-line words, in [`Key::ALL`] order (repeatable
    /// keys in their order); absent settings give no word. Values are written as they
    /// are: they hold no whitespace when [`parse`](Self::parse) accepts them.
    pub fn to_cmdline_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        for key in Key::ALL {
            match key {
                Key::If => v.extend(self.iface.iter().map(|i| key.format(i))),
                Key::Ip => v.extend(self.ip.iter().map(|a| key.format(a))),
                Key::Gw => v.extend(self.gw.iter().map(|a| key.format(a))),
                Key::Hostname => v.extend(self.hostname.iter().map(|h| key.format(h))),
                Key::Peer => v.extend(
                    self.peers
                        .iter()
                        .map(|(h, ip)| key.format(format_args!("{h},{ip}"))),
                ),
                Key::Node => v.extend(self.node.iter().map(|n| key.format(n))),
                Key::Mount => v.extend(self.mounts.iter().map(|m| key.format(m))),
                Key::Debug => v.extend(self.debug.then(|| key.format(1))),
                Key::Probe => v.extend(self.probe.iter().map(|t| key.format(t))),
                Key::Ctl => v.extend(self.ctl.iter().map(|t| key.format(t))),
            }
        }
        v
    }

    /// [`to_cmdline_args`](Self::to_cmdline_args) joined by spaces.
    pub fn to_cmdline(&self) -> String {
        self.to_cmdline_args().join(" ")
    }

    /// The `beambake.*` parameters of `cmdline` (others ignored); any unknown key or
    /// malformed value is an error.
    pub fn parse(cmdline: &str) -> Result<GuestParams, ContractError> {
        let (params, diags) = Self::parse_lenient(cmdline);
        if diags.is_empty() {
            Ok(params)
        } else {
            Err(ContractError::Cmdline(diags))
        }
    }

    /// The `beambake.*` parameters of `cmdline`, never failing: an unknown key is
    /// ignored and a malformed value dropped, each with a [`Diagnostic`]. A repeated
    /// single-valued key: the last one wins.
    pub fn parse_lenient(cmdline: &str) -> (GuestParams, Vec<Diagnostic>) {
        let mut cfg = GuestParams::default();
        let mut diags = Vec::new();
        for tok in tokens(cmdline) {
            let Some(rest) = tok.strip_prefix(PREFIX) else {
                continue;
            };
            let (name, value) = match rest.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (rest, None),
            };
            let Some(key) = Key::from_name(name) else {
                diags.push(Diagnostic::UnknownKey(format!("{PREFIX}{name}")));
                continue;
            };
            let bad = |value: &str, reason| Diagnostic::Malformed {
                key: key.to_string(),
                value: value.to_string(),
                reason,
            };
            match key {
                Key::Ip => match value.map(parse_cidr) {
                    Some(Ok(c)) => cfg.ip = Some(c),
                    Some(Err(reason)) => diags.push(bad(value.unwrap_or(""), reason)),
                    None => diags.push(bad("", "missing value (want ADDR/PREFIX)")),
                },
                Key::Gw => match value.map(|v| v.parse::<Ipv4Addr>()) {
                    Some(Ok(a)) => cfg.gw = Some(a),
                    Some(Err(_)) => {
                        diags.push(bad(value.unwrap_or(""), "not an IPv4 address"));
                    }
                    None => diags.push(bad("", "missing value (want an IPv4 address)")),
                },
                Key::Hostname => match value {
                    Some(v) => match check_hostname(v) {
                        Ok(()) => cfg.hostname = Some(v.to_string()),
                        Err(reason) => diags.push(bad(v, reason)),
                    },
                    None => diags.push(bad("", "missing value")),
                },
                Key::Node => match value {
                    Some(v) if v.contains('@') && !v.starts_with('@') && !v.ends_with('@') => {
                        cfg.node = Some(v.to_string())
                    }
                    Some(v) => diags.push(bad(v, "want NAME@HOST")),
                    None => diags.push(bad("", "missing value (want NAME@HOST)")),
                },
                Key::If => match value {
                    Some(v)
                        if !v.is_empty()
                            && v.len() < 16
                            && v.chars().all(|c| c.is_ascii_alphanumeric()) =>
                    {
                        cfg.iface = Some(v.to_string())
                    }
                    _ => diags.push(bad(value.unwrap_or(""), "want an interface name")),
                },
                Key::Mount => match value.map(parse_mount) {
                    Some(Ok(m)) => cfg.mounts.push(m),
                    Some(Err(reason)) => diags.push(bad(value.unwrap_or(""), reason)),
                    None => diags.push(bad("", "missing value (want SOURCE,TARGET,FSTYPE)")),
                },
                Key::Peer => match value.map(parse_peer) {
                    Some(Ok(p)) => cfg.peers.push(p),
                    Some(Err(reason)) => diags.push(bad(value.unwrap_or(""), reason)),
                    None => diags.push(bad("", "missing value (want HOSTNAME,IP)")),
                },
                Key::Probe => match value {
                    Some(v) if is_probe_token(v) => cfg.probe = Some(v.to_string()),
                    _ => diags.push(bad(value.unwrap_or(""), "want 1 to 64 letters or digits")),
                },
                Key::Ctl => match value {
                    Some(v)
                        if v.starts_with("tty")
                            && v.len() < 16
                            && v.chars().all(|c| c.is_ascii_alphanumeric()) =>
                    {
                        cfg.ctl = Some(v.to_string())
                    }
                    _ => diags.push(bad(value.unwrap_or(""), "want a serial line (ttyS1)")),
                },
                Key::Debug => match value.map(parse_bool) {
                    // A bare `beambake.debug` turns debugging on.
                    None => cfg.debug = true,
                    Some(Some(b)) => cfg.debug = b,
                    Some(None) => diags.push(bad(value.unwrap_or(""), "want 0 or 1")),
                },
            }
        }
        (cfg, diags)
    }
}

/// What is wrong with one `beambake.*` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    /// A `beambake.*` key we do not know (the init logs a warning).
    UnknownKey(String),
    /// A known key whose value is unusable (the init logs an error and drops the
    /// setting).
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

/// A probe token: 1..=64 ASCII letters or digits.
pub fn is_probe_token(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric())
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

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parses `ADDR/PREFIX`: a usable host address (not 0.0.0.0, broadcast or multicast).
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

/// `HOSTNAME,IP` of a `beambake.peer=` entry.
fn parse_peer(v: &str) -> Result<(String, Ipv4Addr), &'static str> {
    let (host, ip) = v.split_once(',').ok_or("want HOSTNAME,IP")?;
    check_hostname(host)?;
    let ip = ip
        .parse()
        .map_err(|_| "not an IPv4 address after the comma")?;
    Ok((host.to_string(), ip))
}

/// RFC 1123-ish: 1..=64 bytes (the kernel's limit), labels of letters,
/// digits and `-`, separated by dots, not starting or ending with `-`.
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

    fn parse(cmdline: &str) -> (GuestParams, Vec<Diagnostic>) {
        GuestParams::parse_lenient(cmdline)
    }

    /// Every key set, repeatable ones twice.
    fn everything() -> GuestParams {
        GuestParams {
            iface: Some("vec0".into()),
            ip: Some(Ipv4Cidr {
                addr: Ipv4Addr::new(10, 0, 121, 102),
                prefix: 24,
            }),
            gw: Some(Ipv4Addr::new(10, 0, 121, 100)),
            hostname: Some("echo-2".into()),
            peers: vec![
                ("echo-1".into(), Ipv4Addr::new(10, 0, 121, 101)),
                ("echo-3".into(), Ipv4Addr::new(10, 0, 121, 103)),
            ],
            node: Some("echo@10.0.121.102".into()),
            mounts: vec![
                MountSpec {
                    source: "/dev/ubdb".into(),
                    target: "/data".into(),
                    fstype: "ext4".into(),
                    data: String::new(),
                },
                MountSpec {
                    source: "none".into(),
                    target: "/srv/shared".into(),
                    fstype: "hostfs".into(),
                    data: "/host/dir,with,commas".into(),
                },
            ],
            debug: true,
            probe: Some("0123abcdEF".into()),
            ctl: Some("ttyS1".into()),
        }
    }

    #[test]
    fn format_is_pinned() {
        assert_eq!(
            everything().to_cmdline(),
            "beambake.if=vec0 beambake.ip=10.0.121.102/24 beambake.gw=10.0.121.100 \
             beambake.hostname=echo-2 beambake.peer=echo-1,10.0.121.101 \
             beambake.peer=echo-3,10.0.121.103 beambake.node=echo@10.0.121.102 \
             beambake.mount=/dev/ubdb,/data,ext4 \
             beambake.mount=none,/srv/shared,hostfs,/host/dir,with,commas \
             beambake.debug=1 beambake.probe=0123abcdEF beambake.ctl=ttyS1"
        );
        assert_eq!(
            GuestParams::default().to_cmdline_args(),
            Vec::<String>::new()
        );
        assert_eq!(Key::Probe.format("t"), "beambake.probe=t");
        assert_eq!(Key::If.to_string(), "beambake.if");
    }

    #[test]
    fn format_then_parse_gives_the_same_value() {
        let all = everything();
        assert_eq!(GuestParams::parse(&all.to_cmdline()), Ok(all.clone()));
        // Each key alone.
        let alone = [
            GuestParams {
                iface: all.iface.clone(),
                ..Default::default()
            },
            GuestParams {
                ip: all.ip,
                ..Default::default()
            },
            GuestParams {
                gw: all.gw,
                ..Default::default()
            },
            GuestParams {
                hostname: all.hostname.clone(),
                ..Default::default()
            },
            GuestParams {
                peers: all.peers.clone(),
                ..Default::default()
            },
            GuestParams {
                node: all.node.clone(),
                ..Default::default()
            },
            GuestParams {
                mounts: all.mounts.clone(),
                ..Default::default()
            },
            GuestParams {
                debug: true,
                ..Default::default()
            },
            GuestParams {
                probe: all.probe.clone(),
                ..Default::default()
            },
            GuestParams::default(),
        ];
        for p in alone {
            let line = format!("console=ttyS0 quiet {} -- beambake.debug", p.to_cmdline());
            assert_eq!(GuestParams::parse(&line), Ok(p), "{line}");
        }
        for key in Key::ALL {
            assert_eq!(Key::from_name(key.name()), Some(key));
        }
    }

    #[test]
    fn strict_parse_names_every_problem() {
        let e = GuestParams::parse("beambake.colour=blue beambake.ip=1.2.3.4 x=y").unwrap_err();
        let ContractError::Cmdline(diags) = &e else {
            panic!("{e:?}")
        };
        assert_eq!(diags.len(), 2);
        let msg = e.to_string();
        assert!(
            msg.contains("beambake.colour") && msg.contains("beambake.ip"),
            "{msg}"
        );
    }

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
        assert_eq!(parse(""), (GuestParams::default(), vec![]));
        let (cfg, diags) = parse("root=/dev/vda ro foo.bar=1 beambakeip=1");
        assert_eq!(cfg, GuestParams::default());
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
            "beambake.if=",
            "beambake.if=a-b",
        ] {
            let (cfg, diags) = parse(bad);
            assert_eq!(cfg, GuestParams::default(), "{bad}");
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
