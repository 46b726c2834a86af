//! Runtime configuration and launch commands for a baked rumprun guest that runs the BEAM.
//!
//! This module owns the description of one rumprun guest ([`LaunchParams`], checked into a
//! [`Launch`]) and everything derived from it as text: rumprun's two JSON configuration
//! forms ([`flat_json`], [`structured_json`]), the equivalent `rumprun qemu` launcher argv
//! ([`rumprun_command`]), the plain `qemu-system-x86_64` argv ([`qemu_command`]), POSIX sh
//! quoting ([`shell_line`]), and writing those four artefacts into a directory
//! ([`write_all`]). Every output is a deterministic function of the [`Launch`].
//!
//! It must not bake kernels, build ISO images, create tap devices or bridges, look at the
//! host (it does not even check that the kernel or ISO files exist) or run anything.
//!
//! # The guest
//!
//! The layout is the one of rumprun-packages' erlang package: the OTP runtime on one ISO
//! mounted at `/opt/erlang`, the application on another at `/apps/erlang`, and the BEAM
//! (`bin/beam`, baked with `rumpbake hw_virtio`) started as
//!
//! ```text
//! KERNEL -- -no_epmd -root /opt/erlang/lib/erlang -bindir /opt/erlang/lib/erlang/bin -progname erl -- -home /tmp -noshell -pa /apps/erlang START...
//! ```
//!
//! (`-bindir`: OTP 25's init requires it; the seed's OTP 18 line had none.) The
//! clustering form drops `-no_epmd` and inserts `-epmd_module beambake_epmd -name
//! NAME@IP -setcookie COOKIE` before `START...`: the guest cannot run `epmd`, so a port
//! mapper module inside the node ([`EPMD_MODULE`]) registers it and answers other nodes'
//! EPMD requests on port 4369, which is what the seed's `-s erlpmd_ctl start -s
//! setnodename NAME@IP COOKIE` (an Erlang epmd, then `net_kernel:start/1`) did.
//!
//! Disks are attached as virtio block devices in list order, so the guest sees them as
//! `/dev/ld0a`, `/dev/ld1a`, ...; the one virtio NIC is `vioif0`.
//!
//! # Flat form ([`flat_json`])
//!
//! What the `rumprun` launcher of rumprun master writes and `rumprun_config()` in
//! `lib/librumprun_base` reads, passed on the multiboot command line (QEMU `-append`):
//! `cmdline`, `env` (repeated, one `NAME=VALUE` each), optional `hostname`, one `net`
//! object (`if`, `type`, `method`, `addr`, `mask`, optional `gw`; every value a string,
//! `mask` included) and one `blk` object per disk (`source`, `path`, `fstype`,
//! `mountpoint`), keys handled in document order. Things that shape this writer:
//!
//! * The parser (jsmn) checks JSON escapes but never decodes them: the guest sees string
//!   values exactly as written between the quotes. `cmdline` then goes through
//!   `rumprun_parseargs()` (whitespace separates, `'` and `"` quote, `\` takes the next
//!   character literally), which reads JSON's `\"` and `\\` back as `"` and `\`; so
//!   JSON-escaping the command line is also right for the guest, provided arguments
//!   containing spaces (or empty ones) are wrapped in single quotes. A single quote or a
//!   control character cannot be passed at all (`\'` is not JSON, and `\n` reaches the guest
//!   as `n`), and `env` values go to `putenv()` as written, so `"`, `\` and control
//!   characters cannot be passed there. [`Launch::new`] refuses all of these.
//! * `fstype` is `blk` (the guest tries ffs, ext2fs, then cd9660), which rumprun has
//!   understood since 2015-10-20; older trees only knew `cd9660`/`ffs`/`ext2fs`
//!   ([`BlkFsType`]).
//! * QEMU passes `KERNEL JSON` (kernel file name, a space, the `-append` text) and the
//!   guest refuses a command line of [`MULTIBOOT_CMDLINE_SIZE`] bytes or more; checked.
//! * The 2015 launcher doubled every comma for `-append` because QEMU then parsed the
//!   multiboot command line like an option value (`,,` for a comma); current QEMU copies
//!   it verbatim, so commas are not doubled here.
//! * The x86 console is the serial port only when there is no VGA (since 2015-09-29), hence
//!   `-nographic -vga none`.
//!
//! # Structured form ([`structured_json`])
//!
//! rumprun's `doc/config.md` in its last revision (branch `mato-wip-rumprun-config`,
//! 2016-03, never merged into master), passed as the first multiboot module (QEMU
//! `-initrd FILE`). Top-level keys in the order the guest processes them: `rc`, `env`,
//! `mount`, `net`, `netbsd`. `rc[0]` is `{bin, argv, runmode}`: `bin` is the name of the
//! baked program (rumprun-bake uses the file's basename, `beam` for `bin/beam`) and
//! `argv` includes `argv[0]`. The hostname is the `kern.hostname` sysctl (the top-level
//! `hostname` key was dropped on 2016-03-21). There is no `blk` key: virtio disks exist
//! as `/dev/ldNa` without it (`blk` only registers etfs/vnd devices); `mount` names them.
//! That branch has a real JSON parser, so ordinary escaping applies.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

/// File [`write_all`] writes the flat configuration to.
pub const FLAT_CONFIG_FILE: &str = "rumprun-config.json";
/// File [`write_all`] writes the structured configuration to.
pub const STRUCTURED_CONFIG_FILE: &str = "rumprun-config.structured.json";
/// Script running the guest through the `rumprun` launcher.
pub const RUMPRUN_SCRIPT: &str = "run-rumprun.sh";
/// Script running the guest with plain QEMU.
pub const QEMU_SCRIPT: &str = "run-qemu.sh";
/// QEMU binary of [`qemu_command`].
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// rumprun's `BMK_MULTIBOOT_CMDLINE_SIZE`: the guest halts on a command line this long or
/// longer.
pub const MULTIBOOT_CMDLINE_SIZE: usize = 4096;
/// Guest memory of [`LaunchParams::new`].
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// The only guest interface the generated commands create (one virtio NIC).
pub const GUEST_INTERFACE: &str = "vioif0";
/// Longest tap name Linux accepts (`IFNAMSIZ` - 1).
const MAX_TAP_LEN: usize = 15;
/// The port mapper module the clustering form names with `-epmd_module` (erlang/src/
/// beambake_epmd.erl, on the guest's code path): the guest cannot run `epmd`, so the node
/// answers other nodes' EPMD requests itself, as the seed's erlpmd did.
pub const EPMD_MODULE: &str = "beambake_epmd";
/// Launcher tag tying `-I` to `-W`, as in the seed.
const IF_TAG: &str = "if";

/// One ISO image and where the guest mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Host path of the image, e.g. `erlang.iso`; relative paths are relative to the
    /// directory of the generated scripts.
    pub iso: String,
    /// Absolute mount point in the guest, e.g. `/opt/erlang`.
    pub mountpoint: String,
}

/// The guest's one network interface, statically configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Net {
    /// Guest interface name; must be [`GUEST_INTERFACE`].
    pub interface: String,
    /// IPv4 address and prefix length, e.g. `10.0.120.101/24`.
    pub address: String,
    /// Default gateway; must lie in the address's subnet.
    pub gateway: Option<String>,
    /// Host tap device the NIC is connected to, e.g. `tap0` (created by the caller).
    pub tap: String,
}

/// Distributed Erlang with the port mapper in the node ([`EPMD_MODULE`]), the seed's
/// clustering form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clustering {
    /// Node name without the host: the node becomes `NAME@IP`.
    pub node: String,
    /// Magic cookie: printable ASCII without spaces (or `'`, see the module doc).
    pub cookie: String,
}

/// `fstype` of the flat form's `blk` objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BlkFsType {
    /// `blk`: the guest probes ffs, ext2fs, cd9660 (rumprun from 2015-10-20 on).
    #[default]
    Probe,
    /// `cd9660`, for rumprun trees older than 2015-10-20.
    Cd9660,
}

impl BlkFsType {
    fn as_str(self) -> &'static str {
        match self {
            BlkFsType::Probe => "blk",
            BlkFsType::Cd9660 => "cd9660",
        }
    }
}

/// Everything that describes one rumprun guest, unchecked. [`Launch::new`] checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchParams {
    /// Baked kernel file (`rumpbake hw_virtio KERNEL bin/beam`), e.g. `echo.hw.bin`; also
    /// the guest's `argv[0]`.
    pub kernel: String,
    /// Guest memory in MiB (rumprun has no SMP, so this is the one sizing knob).
    pub memory_mib: u32,
    /// ISO images in device order (`/dev/ld0a`, `/dev/ld1a`, ...).
    pub disks: Vec<Disk>,
    pub net: Net,
    /// Guest hostname; unset leaves rumprun's default (`rumprun`).
    pub hostname: Option<String>,
    /// Environment, in order; names must be unique.
    pub env: Vec<(String, String)>,
    /// Name of the baked program for the structured form's `rc[0].bin`.
    pub program: String,
    /// `-root`: the OTP installation, e.g. `/opt/erlang/lib/erlang`.
    pub erl_root: String,
    /// `-home`, e.g. `/tmp`.
    pub home: String,
    /// Directories for `-pa`, e.g. `/apps/erlang`; no `-pa` when empty.
    pub code_paths: Vec<String>,
    /// Arguments that start the application, after everything else, e.g.
    /// `-s echoserver start` or `-boot ... -config ...`.
    pub start: Vec<String>,
    /// Distributed Erlang; `None` runs with `-no_epmd`.
    pub clustering: Option<Clustering>,
    /// `fstype` written in the flat form.
    pub flat_fstype: BlkFsType,
}

impl LaunchParams {
    /// The seed's layout for `kernel` at `address` (`ADDR/PREFIX`): [`DEFAULT_MEMORY_MIB`],
    /// `erlang.iso` at `/opt/erlang` and `app.iso` at `/apps/erlang`, `vioif0` on `tap0`
    /// without gateway, `ERL_INETRC=/opt/erlang/erl_inetrc` and `HOME=/tmp`, program
    /// `beam`, root `/opt/erlang/lib/erlang`, home `/tmp`, `-pa /apps/erlang`, no start
    /// arguments, no clustering.
    pub fn new(kernel: impl Into<String>, address: impl Into<String>) -> LaunchParams {
        LaunchParams {
            kernel: kernel.into(),
            memory_mib: DEFAULT_MEMORY_MIB,
            disks: vec![
                Disk {
                    iso: "erlang.iso".to_string(),
                    mountpoint: "/opt/erlang".to_string(),
                },
                Disk {
                    iso: "app.iso".to_string(),
                    mountpoint: "/apps/erlang".to_string(),
                },
            ],
            net: Net {
                interface: GUEST_INTERFACE.to_string(),
                address: address.into(),
                gateway: None,
                tap: "tap0".to_string(),
            },
            hostname: None,
            env: vec![
                (
                    "ERL_INETRC".to_string(),
                    "/opt/erlang/erl_inetrc".to_string(),
                ),
                ("HOME".to_string(), "/tmp".to_string()),
            ],
            program: "beam".to_string(),
            erl_root: "/opt/erlang/lib/erlang".to_string(),
            home: "/tmp".to_string(),
            code_paths: vec!["/apps/erlang".to_string()],
            start: Vec::new(),
            clustering: None,
            flat_fstype: BlkFsType::Probe,
        }
    }
}

/// Why a [`Launch`] could not be made or written. Each variant names what it is about.
#[derive(Debug, thiserror::Error)]
pub enum RumprunError {
    /// A parameter is unusable; `field` is its path in [`LaunchParams`], e.g.
    /// `net.address`, `env[1].value`, `start[3]`.
    #[error("{field} {value:?}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    #[error(
        "the guest's command line would be {len} bytes (kernel name, space, flat JSON); \
         rumprun's hw platform takes at most {max}"
    )]
    CommandLineTooLong { len: usize, max: usize },
    #[error("writing {path:?}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn invalid(field: impl Into<String>, value: &str, reason: impl Into<String>) -> RumprunError {
    RumprunError::Invalid {
        field: field.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A checked [`LaunchParams`]: every generator below works from one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    params: LaunchParams,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
}

impl Launch {
    /// Checks `params` (see the module doc for why some characters are refused).
    pub fn new(params: LaunchParams) -> Result<Launch, RumprunError> {
        let p = &params;
        check_file("kernel", &p.kernel)?;
        if p.memory_mib == 0 {
            return Err(invalid("memory_mib", "0", "the guest needs some memory"));
        }
        check_disks(&p.disks)?;
        if p.net.interface != GUEST_INTERFACE {
            return Err(invalid(
                "net.interface",
                &p.net.interface,
                format!(
                    "the generated commands attach one virtio NIC, which rumprun names \
                     {GUEST_INTERFACE}"
                ),
            ));
        }
        let (address, prefix) = parse_address("net.address", &p.net.address)?;
        let gateway = match &p.net.gateway {
            Some(g) => Some(parse_gateway("net.gateway", g, address, prefix)?),
            None => None,
        };
        check_tap("net.tap", &p.net.tap)?;
        if let Some(h) = &p.hostname {
            check_hostname("hostname", h)?;
        }
        check_env(&p.env)?;
        check_program("program", &p.program)?;
        check_absolute_arg("erl_root", &p.erl_root)?;
        check_absolute_arg("home", &p.home)?;
        for (i, dir) in p.code_paths.iter().enumerate() {
            check_absolute_arg(format!("code_paths[{i}]"), dir)?;
        }
        for (i, arg) in p.start.iter().enumerate() {
            check_arg(format!("start[{i}]"), arg)?;
        }
        if let Some(c) = &p.clustering {
            check_node("clustering.node", &c.node)?;
            check_cookie("clustering.cookie", &c.cookie)?;
        }
        let launch = Launch {
            params,
            address,
            prefix,
            gateway,
        };
        let len = launch.params.kernel.len() + 1 + flat_json(&launch).len();
        if len >= MULTIBOOT_CMDLINE_SIZE {
            return Err(RumprunError::CommandLineTooLong {
                len,
                max: MULTIBOOT_CMDLINE_SIZE - 1,
            });
        }
        Ok(launch)
    }

    /// The parameters this launch was made from.
    pub fn params(&self) -> &LaunchParams {
        &self.params
    }

    /// The guest's IPv4 address.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The prefix length of [`Launch::address`].
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The default gateway, if any.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
    }

    /// `NAME@IP` of a clustered node.
    pub fn node_name(&self) -> Option<String> {
        self.params
            .clustering
            .as_ref()
            .map(|c| format!("{}@{}", c.node, self.address))
    }

    /// The BEAM's complete `argv`, `argv[0]` (the kernel file name) included.
    pub fn guest_argv(&self) -> Vec<String> {
        let p = &self.params;
        let mut argv = vec![p.kernel.clone(), "--".to_string()];
        if p.clustering.is_none() {
            argv.push("-no_epmd".to_string());
        }
        // OTP >= 19's init wants -bindir (erlexec, which rumprun has not, passes it);
        // nothing is started from it (no fork), so the directory need not exist.
        let bindir = format!("{}/bin", p.erl_root);
        argv.extend(
            [
                "-root",
                &p.erl_root,
                "-bindir",
                &bindir,
                "-progname",
                "erl",
                "--",
                "-home",
                &p.home,
                "-noshell",
            ]
            .map(str::to_string),
        );
        if !p.code_paths.is_empty() {
            argv.push("-pa".to_string());
            argv.extend(p.code_paths.iter().cloned());
        }
        if let (Some(c), Some(node)) = (&p.clustering, self.node_name()) {
            argv.extend(["-epmd_module", EPMD_MODULE, "-name"].map(str::to_string));
            argv.push(node);
            argv.push("-setcookie".to_string());
            argv.push(c.cookie.clone());
        }
        argv.extend(p.start.iter().cloned());
        argv
    }

    /// `argv[1..]` as words of the flat form's `cmdline` (see the module doc): quoted for
    /// `rumprun_parseargs()` and JSON-escaped, i.e. exactly the text between the quotes.
    fn cmdline_words(&self) -> Vec<String> {
        self.guest_argv()
            .iter()
            .map(|arg| {
                let mut word = String::new();
                if arg.is_empty() || arg.contains(' ') {
                    word.push('\'');
                    escape_json_into(&mut word, arg);
                    word.push('\'');
                } else {
                    escape_json_into(&mut word, arg);
                }
                word
            })
            .collect()
    }
}

// ----- the guest's end, from its console ----------------------------------------------

/// The program's exit status when the console `text` shows it ended: rumprun prints
/// `=== _exit(N) called ===` (`=== ERROR: _exit(N) called ===` when N is not 0) or
/// `=== main() of "PROG" returned N ===`, then halts the unikernel (`halted`) — and qemu
/// stays up, so whoever runs it must end it. `None` while it runs.
pub fn console_exit_status(text: &str) -> Option<i32> {
    text.lines().rev().find_map(|l| {
        let l = l.trim();
        let n = l
            .strip_prefix("=== _exit(")
            .or_else(|| l.strip_prefix("=== ERROR: _exit("))
            .and_then(|r| r.strip_suffix(") called ==="))
            .or_else(|| {
                l.strip_prefix("=== main() of \"")
                    .and_then(|r| r.rsplit_once("\" returned "))
                    .and_then(|(_, r)| r.strip_suffix(" ==="))
            })?;
        n.parse().ok()
    })
}

// ----- checks ----------------------------------------------------------------------

/// Host paths (kernel, ISOs): written unquoted into the launcher's JSON, QEMU's
/// comma-separated `-drive` options and, for the kernel, the multiboot command line
/// (where a `{` would be taken for the start of the JSON).
fn check_file(field: impl Into<String>, value: &str) -> Result<(), RumprunError> {
    let ok = !value.is_empty()
        && !value.starts_with('-')
        && !value.ends_with('/')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+@/-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            "expected a file path of letters, digits and . _ + @ / - (not starting with -), \
             as it goes unquoted into rumprun's JSON and QEMU's comma-separated options",
        ))
    }
}

fn check_disks(disks: &[Disk]) -> Result<(), RumprunError> {
    for (i, d) in disks.iter().enumerate() {
        check_file(format!("disks[{i}].iso"), &d.iso)?;
        let field = format!("disks[{i}].mountpoint");
        check_mountpoint(&field, &d.mountpoint)?;
        for earlier in &disks[..i] {
            if earlier.mountpoint == d.mountpoint {
                return Err(invalid(field, &d.mountpoint, "mounted twice"));
            }
            if is_below(&earlier.mountpoint, &d.mountpoint) {
                return Err(invalid(
                    field,
                    &d.mountpoint,
                    format!(
                        "must come before {:?}: mounts happen in list order and this one \
                         would hide it",
                        earlier.mountpoint
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether `path` lies strictly below `dir`.
fn is_below(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/'))
}

fn check_mountpoint(field: &str, value: &str) -> Result<(), RumprunError> {
    let bad = |reason: &str| Err(invalid(field, value, reason));
    let Some(rest) = value.strip_prefix('/') else {
        return bad("must be an absolute path");
    };
    if rest.is_empty() {
        return bad("cannot mount over the guest's root");
    }
    for part in rest.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("must be a normalised path (no empty, . or .. components)");
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+@-".contains(&b))
        {
            return bad(
                "components may hold letters, digits and . _ + @ - only (the launcher splits \
                 -b at the last comma and copies the path unquoted into JSON)",
            );
        }
    }
    Ok(())
}

/// `ADDR/PREFIX` of a guest address.
fn parse_address(field: &str, value: &str) -> Result<(Ipv4Addr, u8), RumprunError> {
    let bad = |reason: String| invalid(field, value, reason);
    let Some((addr_text, prefix_text)) = value.split_once('/') else {
        return Err(bad(
            "expected ADDRESS/PREFIX, e.g. 10.0.120.101/24".to_string()
        ));
    };
    let addr: Ipv4Addr = addr_text
        .parse()
        .map_err(|_| bad(format!("{addr_text:?} is not an IPv4 address")))?;
    let prefix = match prefix_text.parse::<u8>() {
        Ok(n)
            if (1..=32).contains(&n)
                && prefix_text.bytes().all(|b| b.is_ascii_digit())
                && prefix_text.len() <= 2 =>
        {
            n
        }
        _ => {
            return Err(bad(format!(
                "prefix length {prefix_text:?} is not a number in 1..=32"
            )))
        }
    };
    if addr.is_unspecified()
        || addr.is_loopback()
        || addr.is_multicast()
        || addr.is_broadcast()
        || addr.octets()[0] == 0
    {
        return Err(bad(format!("{addr} cannot be a guest's address")));
    }
    if prefix <= 30 {
        let mask = mask(prefix);
        let bits = u32::from(addr);
        if bits & !mask == 0 {
            return Err(bad(format!(
                "{addr} is the network address of {}/{prefix}",
                Ipv4Addr::from(bits & mask)
            )));
        }
        if bits & !mask == !mask {
            return Err(bad(format!(
                "{addr} is the broadcast address of {}/{prefix}",
                Ipv4Addr::from(bits & mask)
            )));
        }
    }
    Ok((addr, prefix))
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn parse_gateway(
    field: &str,
    value: &str,
    addr: Ipv4Addr,
    prefix: u8,
) -> Result<Ipv4Addr, RumprunError> {
    let gw: Ipv4Addr = value
        .parse()
        .map_err(|_| invalid(field, value, "not an IPv4 address"))?;
    let m = mask(prefix);
    let net = Ipv4Addr::from(u32::from(addr) & m);
    if gw == addr {
        return Err(invalid(field, value, "is the guest's own address"));
    }
    if u32::from(gw) & m != u32::from(addr) & m {
        return Err(invalid(
            field,
            value,
            format!("is not in the guest's subnet {net}/{prefix}"),
        ));
    }
    if prefix <= 30 && (u32::from(gw) & !m == 0 || u32::from(gw) & !m == !m) {
        return Err(invalid(
            field,
            value,
            format!("is the network or broadcast address of {net}/{prefix}"),
        ));
    }
    Ok(gw)
}

fn check_tap(field: &str, value: &str) -> Result<(), RumprunError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_TAP_LEN
        && !value.starts_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            format!(
                "expected an interface name of 1..={MAX_TAP_LEN} letters, digits, _ . - \
                 (not starting with -)"
            ),
        ))
    }
}

fn check_hostname(field: &str, value: &str) -> Result<(), RumprunError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            "expected a host name: dot-separated labels of letters, digits and inner -",
        ))
    }
}

fn check_env(env: &[(String, String)]) -> Result<(), RumprunError> {
    let mut seen = HashSet::new();
    for (i, (key, value)) in env.iter().enumerate() {
        let field = format!("env[{i}].key");
        let mut bytes = key.bytes();
        let ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(invalid(
                field,
                key,
                "expected a variable name: a letter or _, then letters, digits or _",
            ));
        }
        if !seen.insert(key.as_str()) {
            return Err(invalid(field, key, "set twice"));
        }
        if let Some(c) = value
            .chars()
            .find(|&c| c == '"' || c == '\\' || c.is_control())
        {
            return Err(invalid(
                format!("env[{i}].value"),
                value,
                format!(
                    "{c:?} cannot be passed: rumprun's flat config hands env strings to \
                     putenv() without undoing JSON escapes"
                ),
            ));
        }
    }
    Ok(())
}

fn check_program(field: &str, value: &str) -> Result<(), RumprunError> {
    let ok = !value.is_empty()
        && !value.starts_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            "expected the baked program's file name (letters, digits, . _ + -)",
        ))
    }
}

/// An argument of the guest's command line (see the module doc).
fn check_arg(field: impl Into<String>, value: &str) -> Result<(), RumprunError> {
    if value.contains('\'') {
        return Err(invalid(
            field,
            value,
            "a single quote cannot be passed: rumprun reads the flat cmdline without undoing \
             JSON escapes and \\' is not JSON",
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(
            field,
            value,
            format!(
                "{c:?} cannot be passed: rumprun reads the flat cmdline without undoing \
                 JSON escapes, so its escaped form would arrive instead"
            ),
        ));
    }
    Ok(())
}

fn check_absolute_arg(field: impl Into<String>, value: &str) -> Result<(), RumprunError> {
    let field = field.into();
    check_arg(field.clone(), value)?;
    if value.starts_with('/') {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            "must be an absolute path in the guest",
        ))
    }
}

fn check_node(field: &str, value: &str) -> Result<(), RumprunError> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            "expected the NAME of NAME@IP: letters, digits, _ and -",
        ))
    }
}

fn check_cookie(field: &str, value: &str) -> Result<(), RumprunError> {
    if value.is_empty() {
        return Err(invalid(field, value, "must not be empty"));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            field,
            value,
            "must be printable ASCII without spaces",
        ));
    }
    check_arg(field, value)
}

// ----- JSON ------------------------------------------------------------------------

/// Appends `s` escaped for a JSON string (RFC 8259): `"`, `\` and control characters;
/// everything else, non-ASCII included, as is.
fn escape_json_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// `s` as a JSON string, quotes included.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    escape_json_into(&mut out, s);
    out.push('"');
    out
}

/// A one-line JSON object of already rendered values, keys in the given order (repeats
/// allowed, as the flat form needs them).
fn json_object(members: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&json_string(key));
        out.push_str(": ");
        out.push_str(value);
    }
    out.push('}');
    out
}

fn string_object(members: &[(&str, &str)]) -> String {
    let rendered: Vec<(&str, String)> = members.iter().map(|(k, v)| (*k, json_string(v))).collect();
    json_object(&rendered)
}

/// The flat configuration, one line without a trailing newline: `cmdline`, `env` per
/// variable, `hostname` if set, `net`, then `blk` per disk. This is the `-append` text of
/// [`qemu_command`].
pub fn flat_json(launch: &Launch) -> String {
    let p = &launch.params;
    let cmdline = launch.cmdline_words().join(" ");
    // The words are already JSON-escaped (see Launch::cmdline_words).
    let mut members: Vec<(&str, String)> = vec![("cmdline", format!("\"{cmdline}\""))];
    for (key, value) in &p.env {
        members.push(("env", json_string(&format!("{key}={value}"))));
    }
    if let Some(h) = &p.hostname {
        members.push(("hostname", json_string(h)));
    }
    let addr = launch.address.to_string();
    let mask = launch.prefix.to_string();
    let gw = launch.gateway.map(|g| g.to_string());
    let mut net = vec![
        ("if", p.net.interface.as_str()),
        ("type", "inet"),
        ("method", "static"),
        ("addr", addr.as_str()),
        ("mask", mask.as_str()),
    ];
    if let Some(gw) = &gw {
        net.push(("gw", gw.as_str()));
    }
    members.push(("net", string_object(&net)));
    for (i, d) in p.disks.iter().enumerate() {
        let dev = format!("/dev/ld{i}a");
        members.push((
            "blk",
            string_object(&[
                ("source", "dev"),
                ("path", &dev),
                ("fstype", p.flat_fstype.as_str()),
                ("mountpoint", &d.mountpoint),
            ]),
        ));
    }
    json_object(&members)
}

/// A JSON object with keys in insertion order. (`serde_json::Value` would sort them, or
/// not, depending on whether some crate in the build enables `preserve_order`.)
struct Ordered<'a, V>(Vec<(&'a str, V)>);

impl<V> Ordered<'_, V> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<V: Serialize> Serialize for Ordered<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
struct Structured<'a> {
    rc: [Rc<'a>; 1],
    #[serde(skip_serializing_if = "Ordered::is_empty")]
    env: Ordered<'a, &'a str>,
    #[serde(skip_serializing_if = "Ordered::is_empty")]
    mount: Ordered<'a, Mount>,
    net: StructuredNet<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netbsd: Option<NetBsd<'a>>,
}

#[derive(Serialize)]
struct Rc<'a> {
    bin: &'a str,
    argv: Vec<String>,
    runmode: &'static str,
}

#[derive(Serialize)]
struct Mount {
    source: &'static str,
    path: String,
}

#[derive(Serialize)]
struct StructuredNet<'a> {
    interfaces: Ordered<'a, Interface>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gateways: Vec<Gateway>,
}

#[derive(Serialize)]
struct Interface {
    addrs: Vec<InterfaceAddr>,
}

#[derive(Serialize)]
struct InterfaceAddr {
    #[serde(rename = "type")]
    family: &'static str,
    method: &'static str,
    addr: String,
}

#[derive(Serialize)]
struct Gateway {
    #[serde(rename = "type")]
    family: &'static str,
    addr: String,
}

#[derive(Serialize)]
struct NetBsd<'a> {
    sysctl: Ordered<'a, &'a str>,
}

/// The structured configuration (doc/config.md), pretty-printed, no trailing newline.
pub fn structured_json(launch: &Launch) -> String {
    let p = &launch.params;
    let doc = Structured {
        rc: [Rc {
            bin: &p.program,
            argv: launch.guest_argv(),
            runmode: "",
        }],
        env: Ordered(
            p.env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
        ),
        mount: Ordered(
            p.disks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    (
                        d.mountpoint.as_str(),
                        Mount {
                            source: "blk",
                            path: format!("/dev/ld{i}a"),
                        },
                    )
                })
                .collect(),
        ),
        net: StructuredNet {
            interfaces: Ordered(vec![(
                p.net.interface.as_str(),
                Interface {
                    addrs: vec![InterfaceAddr {
                        family: "inet",
                        method: "static",
                        addr: format!("{}/{}", launch.address, launch.prefix),
                    }],
                },
            )]),
            gateways: launch
                .gateway
                .map(|g| Gateway {
                    family: "inet",
                    addr: g.to_string(),
                })
                .into_iter()
                .collect(),
        },
        netbsd: p.hostname.as_deref().map(|h| NetBsd {
            sysctl: Ordered(vec![("kern.hostname", h)]),
        }),
    };
    serde_json::to_string_pretty(&doc)
        .expect("strings, arrays and string-keyed maps always serialise")
}

// ----- commands --------------------------------------------------------------------

fn words<const N: usize>(w: [&str; N]) -> Vec<String> {
    w.map(str::to_string).to_vec()
}

/// [`rumprun_command`] in groups (an option with its value), for readable scripts.
fn rumprun_groups(launch: &Launch) -> Vec<Vec<String>> {
    let p = &launch.params;
    let base = p
        .net
        .interface
        .trim_end_matches(|c: char| c.is_ascii_digit());
    let mut groups = vec![
        words(["rumprun", "qemu"]),
        vec!["-M".to_string(), p.memory_mib.to_string()],
        vec![
            "-I".to_string(),
            format!("{IF_TAG},{base},-net tap,script=no,ifname={}", p.net.tap),
        ],
    ];
    let mut netspec = format!("{IF_TAG},inet,static,{}/{}", launch.address, launch.prefix);
    if let Some(gw) = launch.gateway {
        let _ = write!(netspec, ",{gw}");
    }
    groups.push(vec!["-W".to_string(), netspec]);
    for (key, value) in &p.env {
        groups.push(vec!["-e".to_string(), format!("{key}={value}")]);
    }
    if let Some(h) = &p.hostname {
        groups.push(vec!["-N".to_string(), h.clone()]);
    }
    for d in &p.disks {
        groups.push(vec![
            "-b".to_string(),
            format!("{},{}", d.iso, d.mountpoint),
        ]);
    }
    groups.push(vec!["-i".to_string(), p.kernel.clone()]);
    // The launcher pastes these words into its JSON as they are, so they get the flat
    // form's encoding; for ordinary arguments that is the argument itself.
    groups.push(launch.cmdline_words().split_off(1));
    groups
}

/// `rumprun qemu ...`: the seed's launcher invocation for this guest (interactive, `-i`),
/// which writes the same flat configuration (keys in another order) and runs QEMU.
///
/// The launcher still doubles every comma in its `-append` text for the QEMU of 2015; a
/// current QEMU passes `,,` on, which rumprun's parser skips between keys but keeps inside
/// strings, so a `,` in an argument or environment value reaches the guest doubled.
/// [`qemu_command`] has no such problem.
pub fn rumprun_command(launch: &Launch) -> Vec<String> {
    rumprun_groups(launch).concat()
}

/// How a qemu for a baked rumprun kernel is wired: the only things in which the launch
/// config's `run-qemu.sh` and `beambake boot` differ.
pub enum QemuWiring<'a> {
    /// `run-qemu.sh`, run by a person: the tap by name, the console on the terminal
    /// (`-nographic`), qemu's default accelerator.
    Script { tap: &'a str },
    /// `beambake boot`: named, an explicit accelerator, no default devices or user
    /// config, no reboot; the tap (when there is one) at fd 3; the serial console is
    /// added by the caller.
    Boot {
        name: &'a str,
        accel: &'a str,
        tap_fd3: bool,
    },
}

/// What qemu boots: a baked rumprun kernel, its flat configuration and its ISOs.
pub struct QemuGuest<'a> {
    pub memory_mib: u32,
    pub kernel: &'a str,
    /// The flat configuration ([`flat_json`]), passed on `-append`.
    pub append: &'a str,
    /// In guest order: the first is `ld0a`.
    pub disks: Vec<String>,
}

/// The one qemu command line (after the program) for a baked rumprun kernel, in groups
/// (an option with its value): multiboot `-kernel`, the configuration on `-append`, the
/// ISOs as read-only virtio disks in order (`ld0a`, `ld1a`, ...), one virtio-net-pci NIC
/// (`vioif0`) on the tap. Used by [`qemu_command`] (and so `run-qemu.sh`) and by
/// `beambake boot`.
pub fn qemu_args(guest: &QemuGuest, wiring: &QemuWiring) -> Vec<Vec<String>> {
    let mut groups = Vec::new();
    if let QemuWiring::Boot { name, .. } = wiring {
        groups.push(vec!["-name".to_string(), name.to_string()]);
    }
    groups.push(vec!["-m".to_string(), guest.memory_mib.to_string()]);
    match wiring {
        QemuWiring::Script { .. } => groups.push(words(["-nographic"])),
        QemuWiring::Boot { accel, .. } => {
            groups.push(vec!["-accel".to_string(), accel.to_string()]);
            groups.push(words(["-nodefaults"]));
            groups.push(words(["-no-user-config"]));
            groups.push(words(["-display", "none"]));
        }
    }
    groups.push(words(["-vga", "none"]));
    if let QemuWiring::Boot { .. } = wiring {
        groups.push(words(["-no-reboot"]));
    }
    groups.push(vec!["-kernel".to_string(), guest.kernel.to_string()]);
    groups.push(vec!["-append".to_string(), guest.append.to_string()]);
    for d in &guest.disks {
        // check_file keeps commas out of the ISO names, so nothing needs QEMU's `,,`.
        groups.push(vec![
            "-drive".to_string(),
            format!("if=virtio,file={d},format=raw,readonly=on"),
        ]);
    }
    // -netdev/-device rather than the note's `-net nic,model=virtio -net tap,...`: the
    // same virtio-net-pci NIC, but wired straight to the tap instead of through a legacy
    // `-net` hub, and with downscript=no (`-net tap,script=no` would still run
    // /etc/qemu-ifdown on exit).
    let netdev = match wiring {
        QemuWiring::Script { tap } => {
            Some(format!("tap,id=net0,ifname={tap},script=no,downscript=no"))
        }
        QemuWiring::Boot { tap_fd3: true, .. } => Some("tap,id=net0,fd=3".to_string()),
        QemuWiring::Boot { tap_fd3: false, .. } => None,
    };
    if let Some(netdev) = netdev {
        groups.push(vec!["-netdev".to_string(), netdev]);
        groups.push(words(["-device", "virtio-net-pci,netdev=net0"]));
    }
    groups
}

/// [`qemu_command`] in groups, for readable scripts.
fn qemu_groups(launch: &Launch) -> Vec<Vec<String>> {
    let p = &launch.params;
    let guest = QemuGuest {
        memory_mib: p.memory_mib,
        kernel: &p.kernel,
        append: &flat_json(launch),
        disks: p.disks.iter().map(|d| d.iso.clone()).collect(),
    };
    let mut groups = vec![vec![QEMU_BINARY.to_string()]];
    groups.extend(qemu_args(&guest, &QemuWiring::Script { tap: &p.net.tap }));
    groups
}

/// `qemu-system-x86_64 ...` booting the baked kernel directly (multiboot), the flat
/// configuration on `-append`, the ISOs as read-only virtio disks and the NIC on the tap.
pub fn qemu_command(launch: &Launch) -> Vec<String> {
    qemu_groups(launch).concat()
}

/// Words that need no quoting anywhere in a POSIX sh command.
fn is_plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b)
}

/// Words that are special as the first word of a command.
const RESERVED: [&str; 16] = [
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in", "then",
    "until", "while",
];

fn quote_word(out: &mut String, word: &str, first: bool) {
    let plain = !word.is_empty()
        && word.bytes().all(is_plain_byte)
        && !(first && (RESERVED.contains(&word) || looks_like_assignment(word)));
    if plain {
        out.push_str(word);
    } else {
        out.push('\'');
        out.push_str(&word.replace('\'', r"'\''"));
        out.push('\'');
    }
}

/// `NAME=...`, which sh takes for an assignment in front of a command.
fn looks_like_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        let mut b = name.bytes();
        b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    })
}

/// `args` as one POSIX sh command line: each word as is when that is safe, otherwise in
/// single quotes (a `'` inside becomes `'\''`).
pub fn shell_line<S: AsRef<str>>(args: &[S]) -> String {
    let mut out = String::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        quote_word(&mut out, arg.as_ref(), i == 0);
    }
    out
}

fn script(what: &str, groups: &[Vec<String>]) -> String {
    let mut out = String::from("#!/bin/sh\n");
    let _ = writeln!(out, "# Generated by beambake: {what}.");
    out.push_str("cd \"$(dirname \"$0\")\" || exit 1\n");
    out.push_str("exec ");
    let lines: Vec<String> = groups.iter().map(|g| shell_line(g)).collect();
    out.push_str(&lines.join(" \\\n    "));
    out.push('\n');
    out
}

/// The files of [`write_all`]: name, contents, mode.
fn render(launch: &Launch) -> [(&'static str, String, u32); 4] {
    let kernel = &launch.params.kernel;
    [
        (FLAT_CONFIG_FILE, flat_json(launch) + "\n", 0o644),
        (
            STRUCTURED_CONFIG_FILE,
            structured_json(launch) + "\n",
            0o644,
        ),
        (
            RUMPRUN_SCRIPT,
            script(
                &format!("runs {kernel} with the rumprun launcher"),
                &rumprun_groups(launch),
            ),
            0o755,
        ),
        (
            QEMU_SCRIPT,
            script(
                &format!("boots {kernel} with QEMU, configuration on -append"),
                &qemu_groups(launch),
            ),
            0o755,
        ),
    ]
}

/// Writes [`FLAT_CONFIG_FILE`], [`STRUCTURED_CONFIG_FILE`], [`RUMPRUN_SCRIPT`] and
/// [`QEMU_SCRIPT`] (both executable) into `dir`, creating it if needed, and returns their
/// paths in that order. Each file is written atomically ([`beambake_images::output::write_bytes_mode`]:
/// unnamed temp file, synced, linked + renamed over `NAME`, directory synced). The scripts
/// `cd` to their own directory first, so relative kernel and ISO paths are relative to `dir`.
pub fn write_all(launch: &Launch, dir: &Path) -> Result<Vec<PathBuf>, RumprunError> {
    fs::create_dir_all(dir).map_err(|source| RumprunError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, contents, mode) in render(launch) {
        let path = dir.join(name);
        beambake_images::output::write_bytes_mode(&path, contents.as_bytes(), mode).map_err(
            |e| RumprunError::Write {
                path: path.clone(),
                source: e.source,
            },
        )?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use beambake_testkit::golden::check as golden;
    use beambake_testkit::output;

    /// The seed's echo server, as a relx-style OTP release on app.iso.
    fn echo() -> LaunchParams {
        let mut p = LaunchParams::new("echo.hw.bin", "10.0.120.101/24");
        p.memory_mib = 128;
        p.code_paths = vec!["/apps/erlang/lib/echo-0.1.0/ebin".to_string()];
        p.start = [
            "-config",
            "/apps/erlang/releases/0.1.0/sys.config",
            "-s",
            "echo_app",
            "start",
        ]
        .map(str::to_string)
        .to_vec();
        p
    }

    fn echo_cluster() -> LaunchParams {
        let mut p = echo();
        p.hostname = Some("echo".to_string());
        p.net.gateway = Some("10.0.120.1".to_string());
        p.clustering = Some(Clustering {
            node: "echo".to_string(),
            cookie: "testcookie".to_string(),
        });
        p
    }

    fn launch(p: LaunchParams) -> Launch {
        Launch::new(p).expect("valid launch")
    }

    fn check_goldens(prefix: &str, l: &Launch) {
        for (name, contents, _) in render(l) {
            golden(&format!("{prefix}-{name}"), &contents);
        }
    }

    #[test]
    fn golden_plain() {
        check_goldens("rumprun-plain", &launch(echo()));
    }

    #[test]
    fn golden_cluster() {
        check_goldens("rumprun-cluster", &launch(echo_cluster()));
    }

    fn err_field(p: LaunchParams) -> (String, String, String) {
        match Launch::new(p) {
            Err(RumprunError::Invalid {
                field,
                value,
                reason,
            }) => (field, value, reason),
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    // ----- guest-side models ---------------------------------------------------------

    /// rumprun's `rumprun_parseargs()` (lib/librumprun_base/parseargs.c), byte for byte.
    fn parseargs(s: &str) -> Vec<String> {
        let b = s.as_bytes();
        let mut i = 0;
        let mut args: Vec<Vec<u8>> = Vec::new();
        let mut cur: Option<Vec<u8>> = None;
        let mut quote: i32 = -1;
        let next = |i: &mut usize| {
            let c = b.get(*i).copied().unwrap_or(0);
            *i += 1;
            c
        };
        loop {
            let ac = next(&mut i);
            let mut rc = ac;
            if ac == b'\\' {
                rc = next(&mut i);
            }
            if rc == 0 || ac == b' ' || ac == b'\n' || ac == b'\t' {
                if rc == 0 || quote == 0 {
                    if let Some(a) = cur.take() {
                        args.push(a);
                    }
                    quote = -1;
                }
                if rc == 0 {
                    break;
                }
                if quote < 0 {
                    continue;
                }
            }
            if quote < 0 {
                cur = Some(Vec::new());
                quote = 0;
            }
            if quote > 0 && i32::from(ac) == quote {
                quote = 0;
                continue;
            }
            if ac == b'\'' || ac == b'"' {
                quote = i32::from(ac);
                continue;
            }
            cur.as_mut().unwrap().push(rc);
        }
        args.into_iter()
            .map(|a| String::from_utf8(a).unwrap())
            .collect()
    }

    /// The raw text of every JSON string token, in order, as jsmn hands it to rumprun
    /// (escapes left as they are).
    fn raw_strings(json: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut chars = json.chars();
        while let Some(c) = chars.next() {
            if c != '"' {
                continue;
            }
            let mut s = String::new();
            loop {
                match chars.next().expect("unterminated string") {
                    '"' => break,
                    '\\' => {
                        s.push('\\');
                        s.push(chars.next().expect("dangling escape"));
                    }
                    c => s.push(c),
                }
            }
            out.push(s);
        }
        out
    }

    /// What the flat-form guest sees: its argv and its `env` strings.
    fn guest_view(flat: &str) -> (Vec<String>, Vec<String>) {
        let raw = raw_strings(flat);
        let mut argv = None;
        let mut env = Vec::new();
        // Top-level keys and values alternate, but nested objects interleave; only look
        // at a key directly followed by its string value.
        for pair in raw.windows(2) {
            match pair[0].as_str() {
                "cmdline" if argv.is_none() => argv = Some(parseargs(&pair[1])),
                "env" => env.push(pair[1].clone()),
                _ => {}
            }
        }
        (argv.expect("cmdline"), env)
    }

    /// Parses a JSON object keeping repeated keys, in order.
    fn entries(json: &str) -> Vec<(String, serde_json::Value)> {
        use serde::de::{Deserializer as _, MapAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<(String, serde_json::Value)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(out)
            }
        }
        let mut de = serde_json::Deserializer::from_str(json);
        let out = (&mut de).deserialize_map(V).expect("flat JSON parses");
        de.end().expect("nothing after the object");
        out
    }

    fn tricky() -> LaunchParams {
        let mut p = echo();
        p.env
            .push(("GREETING".to_string(), "hi there, 'you' / ü".to_string()));
        p.start = [
            "-eval",
            r#"io:format("~s~n", ["a \"quoted\" \\ word"])"#,
            "",
            "two  spaces",
            r"C:\dir\",
            "ünïcode,comma",
        ]
        .map(str::to_string)
        .to_vec();
        p
    }

    // ----- flat form -----------------------------------------------------------------

    #[test]
    fn flat_json_keys_and_values() {
        for (p, has_gw) in [(echo(), false), (echo_cluster(), true)] {
            let l = launch(p.clone());
            let flat = flat_json(&l);
            assert!(!flat.contains('\n'));
            let e = entries(&flat);
            let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
            let mut expect = vec!["cmdline", "env", "env"];
            if p.hostname.is_some() {
                expect.push("hostname");
            }
            expect.extend(["net", "blk", "blk"]);
            assert_eq!(keys, expect);
            assert_eq!(e[1].1, "ERL_INETRC=/opt/erlang/erl_inetrc");
            assert_eq!(e[2].1, "HOME=/tmp");
            let net = &e[keys.iter().position(|k| *k == "net").unwrap()].1;
            assert_eq!(net["if"], "vioif0");
            assert_eq!(net["type"], "inet");
            assert_eq!(net["method"], "static");
            assert_eq!(net["addr"], "10.0.120.101");
            assert_eq!(net["mask"], "24", "mask must be a string for jsmn");
            assert_eq!(net.get("gw").is_some(), has_gw);
            let blks: Vec<&serde_json::Value> = e
                .iter()
                .filter(|(k, _)| k == "blk")
                .map(|(_, v)| v)
                .collect();
            assert_eq!(blks[0]["path"], "/dev/ld0a");
            assert_eq!(blks[0]["mountpoint"], "/opt/erlang");
            assert_eq!(blks[1]["path"], "/dev/ld1a");
            assert_eq!(blks[1]["mountpoint"], "/apps/erlang");
            for b in blks {
                assert_eq!(b["source"], "dev");
                assert_eq!(b["fstype"], "blk");
            }
            // The guest's view of cmdline is the argv.
            let (argv, env) = guest_view(&flat);
            assert_eq!(argv, l.guest_argv());
            assert_eq!(env, ["ERL_INETRC=/opt/erlang/erl_inetrc", "HOME=/tmp"]);
        }
    }

    #[test]
    fn the_console_says_when_and_how_the_program_ended() {
        assert_eq!(
            console_exit_status("=== calling \"x\" main() ===\nEcho server started\n"),
            None
        );
        assert_eq!(
            console_exit_status("...\n\n=== _exit(0) called ===\nrump kernel halting...\nhalted\n"),
            Some(0)
        );
        assert_eq!(
            console_exit_status("\n=== ERROR: _exit(1) called ===\n"),
            Some(1)
        );
        assert_eq!(
            console_exit_status("\n=== main() of \"echo.hw.bin\" returned 3 ===\n"),
            Some(3)
        );
        assert_eq!(console_exit_status("=== _exit(x) called ===\n"), None);
    }

    #[test]
    fn plain_and_cluster_argv() {
        let plain = launch(echo()).guest_argv().join(" ");
        assert_eq!(
            plain,
            "echo.hw.bin -- -no_epmd -root /opt/erlang/lib/erlang -bindir /opt/erlang/lib/erlang/bin -progname erl -- -home /tmp \
             -noshell -pa /apps/erlang/lib/echo-0.1.0/ebin \
             -config /apps/erlang/releases/0.1.0/sys.config -s echo_app start"
        );
        let cluster = launch(echo_cluster());
        assert_eq!(cluster.node_name().as_deref(), Some("echo@10.0.120.101"));
        assert_eq!(
            cluster.guest_argv().join(" "),
            "echo.hw.bin -- -root /opt/erlang/lib/erlang -bindir /opt/erlang/lib/erlang/bin -progname erl -- -home /tmp \
             -noshell -pa /apps/erlang/lib/echo-0.1.0/ebin -epmd_module beambake_epmd \
             -name echo@10.0.120.101 -setcookie testcookie \
             -config /apps/erlang/releases/0.1.0/sys.config -s echo_app start"
        );
        // The seed's exact defaults.
        let mut seed = LaunchParams::new("beam.hw.bin", "10.0.120.101/24");
        seed.start = words(["-s", "echoserver", "start"]);
        assert_eq!(
            launch(seed).guest_argv()[1..].join(" "),
            "-- -no_epmd -root /opt/erlang/lib/erlang -bindir /opt/erlang/lib/erlang/bin -progname erl -- -home /tmp -noshell \
             -pa /apps/erlang -s echoserver start"
        );
    }

    #[test]
    fn flat_json_escapes_quotes_and_backslashes_for_json_and_guest() {
        let l = launch(tricky());
        let flat = flat_json(&l);
        let e = entries(&flat);
        // Valid JSON; a decoding reader sees the parseargs form ...
        let cmdline = e[0].1.as_str().unwrap();
        assert!(cmdline.contains(r#"io:format("~s~n", ["a \"quoted\" \\ word"])"#));
        assert!(cmdline.contains("'two  spaces'"));
        assert!(cmdline.contains(" '' "));
        // ... and rumprun, which does not decode, gets the exact argv back.
        let (argv, env) = guest_view(&flat);
        assert_eq!(argv, l.guest_argv());
        assert_eq!(env[2], "GREETING=hi there, 'you' / ü");
        assert!(flat.contains(r#"\"~s~n\", [\"a \\\"quoted\\\" \\\\ word\"]"#));
    }

    #[test]
    fn json_string_escaping() {
        assert_eq!(json_string("plain"), r#""plain""#);
        assert_eq!(json_string(r#"a"b"#), r#""a\"b""#);
        assert_eq!(json_string(r"a\b"), r#""a\\b""#);
        assert_eq!(json_string("a\nb\tc\rd"), r#""a\nb\tc\rd""#);
        assert_eq!(
            json_string("\u{1}\u{8}\u{c}\u{1f}"),
            r#""\u0001\b\f\u001f""#
        );
        assert_eq!(json_string("/ü€"), "\"/ü€\"");
        for s in ["a\"b\\c\nd\u{0}e", "\u{7f}ü", ""] {
            let back: String = serde_json::from_str(&json_string(s)).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn newline_or_quote_in_args_and_env_is_refused() {
        let mut p = echo();
        p.start = vec!["-s".to_string(), "a\nb".to_string()];
        let (field, value, reason) = err_field(p);
        assert_eq!((field.as_str(), value.as_str()), ("start[1]", "a\nb"));
        assert!(reason.contains("'\\n'"), "{reason}");

        let mut p = echo();
        p.start = vec!["it's".to_string()];
        assert_eq!(err_field(p).0, "start[0]");

        for bad in ["a\"b", r"a\b", "a\nb", "a\tb"] {
            let mut p = echo();
            p.env.push(("X".to_string(), bad.to_string()));
            let (field, value, _) = err_field(p);
            assert_eq!((field.as_str(), value.as_str()), ("env[2].value", bad));
        }
        let mut p = echo();
        p.env.push(("HOME".to_string(), "/root".to_string()));
        assert_eq!(err_field(p).0, "env[2].key");
        let mut p = echo();
        p.env.push(("1X".to_string(), "y".to_string()));
        assert_eq!(err_field(p).0, "env[2].key");
    }

    #[test]
    fn old_fstype() {
        let mut p = echo();
        p.flat_fstype = BlkFsType::Cd9660;
        let e = entries(&flat_json(&launch(p)));
        assert!(e
            .iter()
            .filter(|(k, _)| k == "blk")
            .all(|(_, v)| v["fstype"] == "cd9660"));
    }

    #[test]
    fn command_line_limit() {
        let mut p = echo();
        p.start = vec!["x".repeat(3900)];
        assert!(matches!(
            Launch::new(p),
            Err(RumprunError::CommandLineTooLong { max: 4095, .. })
        ));
        // Exactly at the limit.
        let base = launch(echo());
        let used = base.params().kernel.len() + 1 + flat_json(&base).len();
        let mut p = echo();
        p.start.push("y".repeat(4095 - used - 1));
        let l = launch(p);
        assert_eq!(l.params().kernel.len() + 1 + flat_json(&l).len(), 4095);
        let mut p = echo();
        p.start.push("y".repeat(4095 - used));
        assert!(Launch::new(p).is_err());
    }

    // ----- structured form -----------------------------------------------------------

    #[test]
    fn structured_json_shape() {
        let l = launch(echo_cluster());
        let text = structured_json(&l);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let e = entries(&text);
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["rc", "env", "mount", "net", "netbsd"]);
        assert_eq!(v["rc"][0]["bin"], "beam");
        assert_eq!(v["rc"][0]["runmode"], "");
        let argv: Vec<String> = serde_json::from_value(v["rc"][0]["argv"].clone()).unwrap();
        assert_eq!(argv, l.guest_argv());
        assert_eq!(v["env"]["ERL_INETRC"], "/opt/erlang/erl_inetrc");
        assert_eq!(v["env"]["HOME"], "/tmp");
        assert_eq!(v["mount"]["/opt/erlang"]["source"], "blk");
        assert_eq!(v["mount"]["/opt/erlang"]["path"], "/dev/ld0a");
        assert_eq!(v["mount"]["/apps/erlang"]["path"], "/dev/ld1a");
        let addr = &v["net"]["interfaces"]["vioif0"]["addrs"][0];
        assert_eq!(addr["type"], "inet");
        assert_eq!(addr["method"], "static");
        assert_eq!(addr["addr"], "10.0.120.101/24");
        assert_eq!(v["net"]["gateways"][0]["addr"], "10.0.120.1");
        assert_eq!(v["netbsd"]["sysctl"]["kern.hostname"], "echo");

        let plain: serde_json::Value =
            serde_json::from_str(&structured_json(&launch(echo()))).unwrap();
        assert!(plain["net"].get("gateways").is_none());
        assert!(plain.get("netbsd").is_none());
    }

    #[test]
    fn structured_json_escapes() {
        let l = launch(tricky());
        let v: serde_json::Value = serde_json::from_str(&structured_json(&l)).unwrap();
        let argv: Vec<String> = serde_json::from_value(v["rc"][0]["argv"].clone()).unwrap();
        assert_eq!(argv, l.guest_argv());
        assert_eq!(v["env"]["GREETING"], "hi there, 'you' / ü");
    }

    // ----- commands ------------------------------------------------------------------

    #[test]
    fn rumprun_command_matches_seed() {
        let mut p = LaunchParams::new("beam.hw.bin", "10.0.120.101/24");
        p.disks[0].iso = "images/erlang.iso".to_string();
        p.disks[1].iso = "examples/app.iso".to_string();
        p.env.truncate(1);
        p.start = words(["-s", "echoserver", "start"]);
        p.memory_mib = 64;
        let cmd = rumprun_command(&launch(p));
        assert_eq!(
            shell_line(&cmd),
            "rumprun qemu -M 64 -I 'if,vioif,-net tap,script=no,ifname=tap0' \
             -W if,inet,static,10.0.120.101/24 -e ERL_INETRC=/opt/erlang/erl_inetrc \
             -b images/erlang.iso,/opt/erlang -b examples/app.iso,/apps/erlang \
             -i beam.hw.bin -- -no_epmd -root /opt/erlang/lib/erlang -bindir /opt/erlang/lib/erlang/bin -progname erl -- \
             -home /tmp -noshell -pa /apps/erlang -s echoserver start"
        );
        let cluster = rumprun_command(&launch(echo_cluster()));
        let line = shell_line(&cluster);
        assert!(line.contains("-W if,inet,static,10.0.120.101/24,10.0.120.1 "));
        assert!(line.contains("-N echo "));
        assert!(line.contains(" -name echo@10.0.120.101 -setcookie testcookie "));
    }

    #[test]
    fn rumprun_command_words_are_the_flat_cmdline() {
        // The launcher pastes the words after the kernel into its JSON verbatim.
        let l = launch(tricky());
        let cmd = rumprun_command(&l);
        let i = cmd.iter().position(|w| w == "-i").unwrap();
        let pasted = format!("{{\"cmdline\": \"{}\"}}", cmd[i + 1..].join(" "));
        let (argv, _) = guest_view(&pasted);
        assert_eq!(argv, l.guest_argv());
    }

    #[test]
    fn qemu_command_shape() {
        let l = launch(echo());
        let cmd = qemu_command(&l);
        assert_eq!(cmd[0], QEMU_BINARY);
        let after = |flag: &str| -> Vec<&str> {
            cmd.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .collect()
        };
        assert_eq!(after("-m"), ["128"]);
        assert_eq!(after("-kernel"), ["echo.hw.bin"]);
        assert_eq!(after("-append"), [flat_json(&l).as_str()]);
        assert_eq!(
            after("-drive"),
            [
                "if=virtio,file=erlang.iso,format=raw,readonly=on",
                "if=virtio,file=app.iso,format=raw,readonly=on"
            ]
        );
        assert_eq!(
            after("-netdev"),
            ["tap,id=net0,ifname=tap0,script=no,downscript=no"]
        );
        assert_eq!(after("-device"), ["virtio-net-pci,netdev=net0"]);
    }

    #[test]
    fn boot_wiring_differs_from_the_script_only_in_wiring() {
        let guest = QemuGuest {
            memory_mib: 128,
            kernel: "/out/echo.hw.bin",
            append: "{}",
            disks: vec!["/out/erlang.iso".into()],
        };
        let boot = |tap_fd3| {
            let wiring = QemuWiring::Boot {
                name: "beambake-echo",
                accel: "tcg",
                tap_fd3,
            };
            qemu_args(&guest, &wiring).concat()
        };
        assert_eq!(
            boot(true),
            [
                "-name",
                "beambake-echo",
                "-m",
                "128",
                "-accel",
                "tcg",
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-vga",
                "none",
                "-no-reboot",
                "-kernel",
                "/out/echo.hw.bin",
                "-append",
                "{}",
                "-drive",
                "if=virtio,file=/out/erlang.iso,format=raw,readonly=on",
                "-netdev",
                "tap,id=net0,fd=3",
                "-device",
                "virtio-net-pci,netdev=net0"
            ]
        );
        assert!(!boot(false).iter().any(|a| a == "-netdev" || a == "-device"));
        let script = qemu_args(&guest, &QemuWiring::Script { tap: "tap0" }).concat();
        let shared = |argv: &[String]| -> Vec<String> {
            let i = argv.iter().position(|a| a == "-kernel").unwrap();
            argv[i..argv.len() - 4].to_vec()
        };
        assert_eq!(shared(&boot(true)), shared(&script));
    }

    fn sh_roundtrip(args: &[String]) -> Vec<String> {
        let script = format!("printf '%s\\0' {}", shell_line(args));
        let out = output(Command::new("/bin/sh").arg("-c").arg(&script));
        assert!(out.status.success(), "{script}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut words: Vec<String> = text.split('\0').map(str::to_string).collect();
        assert_eq!(words.pop().as_deref(), Some(""));
        words
    }

    #[test]
    fn shell_quoting_round_trips_through_sh() {
        let args: Vec<String> = [
            "plain",
            "",
            "two words",
            "it's",
            "''",
            "'\\''",
            r#"say "hi""#,
            "$HOME",
            "${x:-y}",
            "`id`",
            "$(id)",
            "a\\b",
            "line\nbreak",
            "tab\there",
            "*",
            "?",
            "[a]",
            "~",
            "~/x",
            "a=~/b",
            "#comment",
            "a;b|c&d>e<f",
            "{a,b}",
            "!",
            "-n",
            "%s",
            "ünï",
            "x=1",
        ]
        .map(str::to_string)
        .to_vec();
        assert_eq!(sh_roundtrip(&args), args);
        for l in [launch(echo()), launch(echo_cluster()), launch(tricky())] {
            for cmd in [rumprun_command(&l), qemu_command(&l)] {
                assert_eq!(sh_roundtrip(&cmd), cmd);
            }
        }
    }

    #[test]
    fn shell_line_quotes_only_when_needed() {
        assert_eq!(
            shell_line(&["qemu", "-m", "128", "if=virtio,file=a.iso", "a b", "it's"]),
            r"qemu -m 128 if=virtio,file=a.iso 'a b' 'it'\''s'"
        );
        assert_eq!(shell_line(&[""]), "''");
        // Words sh would read as an assignment or a reserved word in command position.
        assert_eq!(shell_line(&["A=1", "B=2"]), "'A=1' B=2");
        assert_eq!(shell_line(&["if", "if"]), "'if' if");
        assert_eq!(shell_line::<&str>(&[]), "");
    }

    #[test]
    fn scripts_are_valid_sh() {
        for l in [launch(echo()), launch(echo_cluster()), launch(tricky())] {
            for (name, contents, _) in render(&l) {
                if name.ends_with(".sh") {
                    assert!(contents.starts_with("#!/bin/sh\n"));
                    let out = output(Command::new("/bin/sh").arg("-n").arg("-c").arg(&contents));
                    assert!(out.status.success(), "{name}: {out:?}");
                }
            }
        }
    }

    #[test]
    fn scripts_exec_the_commands() {
        // Run each script with `exec` and `cd` neutralised, printing the argv.
        let l = launch(tricky());
        for (name, contents, _) in render(&l) {
            let expect = match name {
                RUMPRUN_SCRIPT => rumprun_command(&l),
                QEMU_SCRIPT => qemu_command(&l),
                _ => continue,
            };
            let body = contents
                .replacen("cd \"$(dirname \"$0\")\" || exit 1\n", "", 1)
                .replacen("exec ", "printf '%s\\0' ", 1);
            let out = output(Command::new("/bin/sh").arg("-c").arg(&body));
            assert!(out.status.success(), "{name}: {out:?}");
            let text = String::from_utf8(out.stdout).unwrap();
            let got: Vec<&str> = text.strip_suffix('\0').unwrap().split('\0').collect();
            assert_eq!(got, expect, "{name}");
        }
    }

    // ----- write_all -----------------------------------------------------------------

    #[test]
    fn write_all_writes_four_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("scratch");
        let out = dir.join("out");
        let l = launch(echo_cluster());
        for _ in 0..2 {
            let paths = write_all(&l, &out).unwrap();
            let names: Vec<&str> = paths
                .iter()
                .map(|p| p.file_name().unwrap().to_str().unwrap())
                .collect();
            assert_eq!(
                names,
                [
                    FLAT_CONFIG_FILE,
                    STRUCTURED_CONFIG_FILE,
                    RUMPRUN_SCRIPT,
                    QEMU_SCRIPT
                ]
            );
            for ((path, (_, contents, mode)), _) in paths.iter().zip(render(&l)).zip(0..) {
                assert_eq!(fs::read_to_string(path).unwrap(), contents);
                let got = fs::metadata(path).unwrap().permissions().mode() & 0o777;
                assert_eq!(got, mode, "{}", path.display());
            }
            let mut listing: Vec<String> = fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            listing.sort();
            assert_eq!(
                listing,
                [
                    FLAT_CONFIG_FILE,
                    STRUCTURED_CONFIG_FILE,
                    QEMU_SCRIPT,
                    RUMPRUN_SCRIPT
                ]
            );
        }
        // Over files a previous run left (one of them cut short): each is replaced whole,
        // and no temp file is left beside them.
        fs::write(out.join(QEMU_SCRIPT), "stale").unwrap();
        let paths = write_all(&l, &out).unwrap();
        for (path, (_, contents, _)) in paths.iter().zip(render(&l)) {
            assert_eq!(fs::read_to_string(path).unwrap(), contents);
        }
        assert_eq!(fs::read_dir(&out).unwrap().count(), 4);
    }

    #[test]
    fn write_all_reports_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("scratch");
        fs::create_dir_all(&dir).unwrap();
        let blocker = dir.join("file");
        fs::write(&blocker, "").unwrap();
        let err = write_all(&launch(echo()), &blocker.join("sub")).unwrap_err();
        assert!(
            matches!(&err, RumprunError::Write { path, .. } if path == &blocker.join("sub")),
            "{err:?}"
        );
        assert!(err.to_string().contains("file/sub"), "{err}");
    }

    // ----- checks --------------------------------------------------------------------

    fn with_address(a: &str) -> LaunchParams {
        let mut p = echo();
        p.net.address = a.to_string();
        p
    }

    #[test]
    fn bad_addresses_name_field_and_value() {
        for (value, hint) in [
            ("10.0.120.300/24", "not an IPv4 address"),
            ("10.0.120/24", "not an IPv4 address"),
            ("010.0.120.1/24", "not an IPv4 address"),
            ("10.0.120.101", "ADDRESS/PREFIX"),
            ("0.0.0.0/8", "cannot be a guest's address"),
            ("127.0.0.1/8", "cannot be a guest's address"),
            ("224.0.0.1/4", "cannot be a guest's address"),
            ("10.0.120.0/24", "network address"),
            ("10.0.120.255/24", "broadcast address"),
        ] {
            let (field, v, reason) = err_field(with_address(value));
            assert_eq!((field.as_str(), v.as_str()), ("net.address", value));
            assert!(reason.contains(hint), "{value}: {reason}");
        }
        let err = Launch::new(with_address("10.0.120.300/24")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "net.address \"10.0.120.300/24\": \"10.0.120.300\" is not an IPv4 address"
        );
    }

    #[test]
    fn bad_prefixes_name_field_and_value() {
        for value in [
            "10.0.120.101/33",
            "10.0.120.101/0",
            "10.0.120.101/",
            "10.0.120.101/abc",
            "10.0.120.101/+24",
            "10.0.120.101/024",
            "10.0.120.101/24/1",
        ] {
            let (field, v, reason) = err_field(with_address(value));
            assert_eq!((field.as_str(), v.as_str()), ("net.address", value));
            assert!(reason.contains("prefix length"), "{value}: {reason}");
        }
        // /31 and /32 have no network or broadcast address.
        assert_eq!(launch(with_address("10.0.120.0/31")).prefix(), 31);
        assert_eq!(launch(with_address("10.0.120.255/32")).prefix(), 32);
    }

    #[test]
    fn bad_gateways() {
        for gw in [
            "10.0.121.1",
            "10.0.120.101",
            "10.0.120.0",
            "10.0.120.255",
            "gw",
        ] {
            let mut p = echo();
            p.net.gateway = Some(gw.to_string());
            let (field, v, _) = err_field(p);
            assert_eq!((field.as_str(), v.as_str()), ("net.gateway", gw));
        }
    }

    #[test]
    fn bad_cookies_name_the_field() {
        for cookie in ["", "two words", "tab\tx", "ünï", "it's", "bell\u{7}"] {
            let mut p = echo_cluster();
            p.clustering.as_mut().unwrap().cookie = cookie.to_string();
            let (field, v, _) = err_field(p);
            assert_eq!((field.as_str(), v.as_str()), ("clustering.cookie", cookie));
        }
        let mut p = echo_cluster();
        p.clustering.as_mut().unwrap().cookie = r#"!#$%&"()*\~"#.to_string();
        let l = launch(p);
        let (argv, _) = guest_view(&flat_json(&l));
        assert!(argv.contains(&r#"!#$%&"()*\~"#.to_string()));
        let mut p = echo_cluster();
        p.clustering.as_mut().unwrap().node = "echo@host".to_string();
        assert_eq!(err_field(p).0, "clustering.node");
    }

    #[test]
    fn other_checks_name_the_field() {
        type Change = fn(&mut LaunchParams);
        let cases: Vec<(&str, Change)> = vec![
            ("kernel", |p| p.kernel = "my kernel.bin".into()),
            ("kernel", |p| p.kernel = "{x}.bin".into()),
            ("kernel", |p| p.kernel = "-x.bin".into()),
            ("memory_mib", |p| p.memory_mib = 0),
            ("disks[1].iso", |p| p.disks[1].iso = "a,b.iso".into()),
            ("disks[1].mountpoint", |p| {
                p.disks[1].mountpoint = "apps".into()
            }),
            ("disks[1].mountpoint", |p| {
                p.disks[1].mountpoint = "/".into()
            }),
            ("disks[1].mountpoint", |p| {
                p.disks[1].mountpoint = "/a/../b".into()
            }),
            ("disks[1].mountpoint", |p| {
                p.disks[1].mountpoint = "/a,b".into()
            }),
            ("disks[1].mountpoint", |p| {
                p.disks[1].mountpoint = "/opt/erlang".into()
            }),
            ("disks[1].mountpoint", |p| {
                p.disks[1].mountpoint = "/opt".into()
            }),
            ("net.interface", |p| p.net.interface = "vioif1".into()),
            ("net.tap", |p| p.net.tap = "tap,0".into()),
            ("net.tap", |p| p.net.tap = "t".repeat(16)),
            ("hostname", |p| p.hostname = Some("bad_host".into())),
            ("program", |p| p.program = "bin/beam".into()),
            ("erl_root", |p| p.erl_root = "opt/erlang".into()),
            ("home", |p| p.home = String::new()),
            ("code_paths[0]", |p| p.code_paths[0] = "ebin".into()),
        ];
        for (expect, change) in cases {
            let mut p = echo();
            change(&mut p);
            assert_eq!(err_field(p).0, expect);
        }
        // A parent mounted first is fine.
        let mut p = echo();
        p.disks.push(Disk {
            iso: "extra.iso".into(),
            mountpoint: "/opt/erlang/extra".into(),
        });
        launch(p);
    }
}
