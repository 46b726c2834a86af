//! Recipes: one declarative TOML file says what to build and how to boot and check it.
//!
//! Owns: the recipe schema (unknown keys and bad values are errors that name the file, the
//! key and the line; an unknown key also its table and the closest known key), paths
//! relative to the recipe file, defaults, and address validation.
//! A loaded [`Recipe`] is validated once: its addresses are typed ([`GuestAddr`],
//! [`Ipv4Addr`], one address per VM in [`Recipe::guest_addrs`]) and its paths resolved
//! against the recipe's directory ([`RecipePath`]). What a particular target cannot do is
//! the target's to say (`beambake_target::Target::check`).
//! Must not: build or boot anything.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, a bad value (these name the line), or settings that do
    /// not go together.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The VMs' addresses do not fit the network.
    #[error("{path}: {source}")]
    Addresses {
        path: PathBuf,
        #[source]
        source: AddrError,
    },
}

/// Why the VMs' addresses do not fit the network (see [`check_addrs`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("network.guests is empty")]
    Empty,
    #[error("network.guests lists {listed} addresses but vm.count = {count}")]
    Count { listed: usize, count: u32 },
    #[error("VMs {first} and {second} both ask for the address {addr}")]
    Duplicate {
        first: usize,
        second: usize,
        addr: Ipv4Addr,
    },
    #[error("VM {vm} asks for {addr}, the host's address")]
    HostAddress { vm: usize, addr: Ipv4Addr },
    #[error("VM {vm} address {addr} is not a host address of the subnet {host}/{prefix}")]
    OutsideSubnet {
        vm: usize,
        addr: Ipv4Addr,
        host: Ipv4Addr,
        prefix: u8,
    },
}

/// A path from the recipe, resolved against the recipe's directory when it is loaded;
/// derefs to the resolved path. [`RecipePath::written`] is the path as the recipe says
/// it, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipePath {
    written: PathBuf,
    resolved: PathBuf,
}

impl RecipePath {
    /// The path as the recipe (or the command line) gave it.
    pub fn written(&self) -> &Path {
        &self.written
    }

    fn resolve(&mut self, dir: &Path) {
        self.resolved = resolve(dir, &self.written);
    }
}

/// A path not from a recipe file (e.g. the command line's): used as it is.
impl From<PathBuf> for RecipePath {
    fn from(p: PathBuf) -> Self {
        RecipePath {
            resolved: p.clone(),
            written: p,
        }
    }
}

impl Deref for RecipePath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.resolved
    }
}

impl AsRef<Path> for RecipePath {
    fn as_ref(&self) -> &Path {
        &self.resolved
    }
}

impl<'de> Deserialize<'de> for RecipePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PathBuf::deserialize(d).map(RecipePath::from)
    }
}

impl Serialize for RecipePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.written.serialize(s)
    }
}

/// `p` against `dir` (absolute paths stay as they are).
fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Microvm,
    Uml,
    Rumprun,
    Osv,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub target: Target,
    pub release: ReleaseCfg,
    #[serde(default)]
    pub kernel: KernelCfg,
    #[serde(default)]
    pub vm: VmCfg,
    #[serde(default)]
    pub network: NetworkCfg,
    pub distribution: Option<DistributionCfg>,
    #[serde(default, rename = "check")]
    pub checks: Vec<Check>,
    #[serde(default)]
    pub smoke: SmokeCfg,
    #[serde(default)]
    pub launch: LaunchCfg,
    /// A persistent data disk per VM (uml).
    pub data: Option<DataCfg>,
    /// Host directories passed through into the guest (uml: hostfs).
    #[serde(default)]
    pub hostfs: Vec<HostfsCfg>,
    /// Extra read-only disk images attached to the guest (uml), e.g. ISO 9660 images.
    #[serde(default, rename = "disk")]
    pub disks: Vec<DiskCfg>,
    /// The rumprun target's toolchain settings.
    #[serde(default)]
    pub rumprun: RumprunCfg,
    /// The osv target's settings.
    #[serde(default)]
    pub osv: OsvCfg,
    /// Directory of the recipe file; relative paths are resolved against it.
    #[serde(skip)]
    pub dir: PathBuf,
    #[serde(skip)]
    pub file: PathBuf,
    /// One address per VM, computed and checked at load: [`Recipe::guest_addrs`].
    #[serde(skip)]
    guest_addrs: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseCfg {
    /// A release directory, tarball or rebar3 project.
    pub source: RecipePath,
    pub profile: Option<String>,
    pub name: Option<String>,
    pub otp_root: Option<RecipePath>,
    pub prefix: Option<String>,
    /// An installed OTP build (e.g. patched with `beambake patch apply`, then
    /// `make install`) whose ERTS replaces the release's; its version must match.
    pub erts_from: Option<RecipePath>,
    /// Strip debug and documentation chunks from every `.beam` in the image
    /// (`beam_lib:strip_files/1` in the host's `erl`, every target): smaller images, no
    /// source-level debugging or `h/1` docs. relx's prod mode already strips debug info.
    #[serde(default)]
    pub strip_beams: bool,
}

/// A data disk: an ext4 image per VM, created by beambake when absent, mounted at
/// `mount`. What the release writes there survives a restart; the root stays read-only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataCfg {
    /// The disk image (relative to the recipe). Default: `data-N.ext4` in the build's
    /// output directory (N = VM index). Only with a single VM.
    pub path: Option<RecipePath>,
    /// Size of a disk beambake creates.
    #[serde(default = "default_data_size")]
    pub size_mib: u64,
    #[serde(default = "default_data_mount")]
    pub mount: String,
}

fn default_data_size() -> u64 {
    64
}
fn default_data_mount() -> String {
    "/data".into()
}

/// A host directory mounted into the guest (User Mode Linux's hostfs).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostfsCfg {
    /// Host directory (relative to the recipe); must exist.
    pub host: RecipePath,
    /// Absolute path in the guest.
    pub guest: String,
}

/// An extra disk image, attached read-only and mounted at `mount`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskCfg {
    /// The image (relative to the recipe); must exist when the VM boots.
    pub path: RecipePath,
    pub mount: String,
    /// `iso9660`, `squashfs` or `ext4`.
    pub fstype: String,
}

/// rumprun: where the toolchain's pieces are.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RumprunCfg {
    /// The BEAM cross-built for rumprun (`beam.smp` of an OTP build for
    /// `x86_64-rumprun-netbsd`: `cargo xtask rumprun-beam`), baked with `rumprun-bake
    /// hw_virtio`. Default: `$RUMPRUN_TOOLCHAIN/erlang/bin/beam`.
    pub beam: Option<RecipePath>,
    /// The rumprun source snapshot beambake builds the toolchain from (xz tar, sha256
    /// pinned in `images/rumprun.toml`; built once into the cache). Default:
    /// `$BEAMBAKE_RUMPRUN_SRC`, else a toolchain already installed (`rumprun-bake` on
    /// `PATH` or in `$RUMPRUN_TOOLCHAIN/bin`).
    pub source: Option<RecipePath>,
    /// Set by `--no-bake`: write the ISOs and the launch config only.
    #[serde(skip)]
    pub no_bake: bool,
}

/// osv: where OSv comes from and how the release goes in.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OsvCfg {
    /// The OSv source beambake builds OSv from: the snapshot (xz tar, sha256 pinned in
    /// `images/osv.toml`) or a local OSv checkout with its submodules (a directory, keyed
    /// by its content). Default: `$BEAMBAKE_OSV_SRC`.
    pub source: Option<RecipePath>,
    /// How the release goes into the image: `rofs` (default: beambake writes OSv's
    /// read-only filesystem, no boot at build time) or `upload` (rebar3_osv's way: a ZFS
    /// base image booted with OSv's cpio receiver, the tree streamed in).
    #[serde(default)]
    pub fill: OsvFill,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OsvFill {
    #[default]
    Rofs,
    Upload,
}

/// The read-only root filesystem format of the uml target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RootFs {
    /// Compressed, smallest (the default; see ARCHITECTURE.md for the measurement).
    Squashfs,
    /// `mkfs.ext4 -d`, mounted read-only.
    Ext4,
}

/// How the BEAM is started in the guest.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchCfg {
    /// `embedded` (the release's own choice, relx's default: every module of the boot
    /// script loaded at start), `interactive` (modules loaded on first use: faster
    /// boot, measured in BENCHMARKS.md) or `traced` (the modules the release loads up to
    /// the end of its boot script, found by one run on the host at build time, loaded at
    /// start; the others on first use. Targets whose ERTS runs on the host only).
    pub code_loading: Option<CodeLoading>,
    /// Extra emulator/init arguments (e.g. `["+S", "1:1"]`).
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// Emulator flags for a small guest, chosen by measurement (BENCHMARKS.md): one
    /// scheduler and one dirty CPU scheduler per vCPU, one dirty I/O scheduler, one async
    /// thread, no scheduler busy-waiting ([`LaunchCfg::small_guest_args`]). They come after
    /// the release's vm.args and before `extra_args`, so `extra_args` still win.
    #[serde(default)]
    pub small_guest: bool,
    /// The release's Erlang shell on the console (`bin/NAME console` instead of
    /// `foreground`): what `beambake_vm:send/2` types into.
    #[serde(default)]
    pub shell: bool,
}

impl LaunchCfg {
    /// `small_guest`'s flags for a guest of `cpus` vCPUs.
    pub fn small_guest_args(cpus: u32) -> Vec<String> {
        let c = format!("{cpus}:{cpus}");
        [
            "+S",
            &c,
            "+SDcpu",
            &c,
            "+SDio",
            "1",
            "+A",
            "1",
            "+sbwt",
            "none",
            "+sbwtdcpu",
            "none",
            "+sbwtdio",
            "none",
        ]
        .map(String::from)
        .to_vec()
    }

    /// The emulator arguments beambake adds: `small_guest`'s, then `extra_args`.
    pub fn args(&self, cpus: u32) -> Vec<String> {
        let mut a = if self.small_guest {
            LaunchCfg::small_guest_args(cpus)
        } else {
            Vec::new()
        };
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CodeLoading {
    Embedded,
    Interactive,
    Traced,
}

impl CodeLoading {
    /// The BEAM's `-mode` for this choice (a traced boot script runs interactive).
    pub fn mode(self) -> &'static str {
        match self {
            CodeLoading::Embedded => "embedded",
            CodeLoading::Interactive | CodeLoading::Traced => "interactive",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KernelCfg {
    /// Which kernel: Debian's cloud kernel (a pin, the default) or beambake's minimal
    /// kernel built from source (microvm only).
    #[serde(default, skip_serializing_if = "KernelSource::is_debian")]
    pub source: KernelSource,
    /// A pinned Debian kernel package (TOML file); the default when `path` is unset.
    pub pin: Option<RecipePath>,
    /// A kernel image of the user's own (bzImage).
    pub path: Option<RecipePath>,
    /// Modules for `path`.
    pub modules: Option<RecipePath>,
    /// Extra modules to load (besides the ones the machine and network need).
    #[serde(default)]
    pub extra_modules: Vec<String>,
    /// Extra kernel command line.
    #[serde(default)]
    pub cmdline: String,
}

/// `[kernel] source`: where the kernel comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelSource {
    /// A Debian kernel package (`pin`, default `images/kernel-debian-cloud.toml`) or the
    /// user's own (`path`).
    #[default]
    Debian,
    /// beambake's minimal kernel, built from source (`images/linux-minimal.config`):
    /// everything built in, booted as the uncompressed PVH `vmlinux`.
    Minimal,
}

impl KernelSource {
    pub fn is_debian(&self) -> bool {
        *self == KernelSource::Debian
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// `-M microvm`: virtio-mmio, no PCI, no firmware ROMs (fastest).
    Microvm,
    /// `-M pc`: SeaBIOS, PCI.
    Pc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a probe guest proves it (see `boot::accel`), else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmCfg {
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    #[serde(default = "default_cpus")]
    pub cpus: u32,
    #[serde(default = "default_machine")]
    pub machine: Machine,
    #[serde(default = "default_accel")]
    pub accel: Accel,
    /// qemu `-cpu` model; by default `qemu64` under TCG, `host` under KVM.
    pub cpu: Option<String>,
    /// zstd level of the initramfs.
    #[serde(default = "default_level")]
    pub compression_level: i32,
    /// How many VMs `beambake boot`/`smoke` starts from the one image (each with its own
    /// address: `network.guest` + index, or `network.guests`).
    #[serde(default = "default_count")]
    pub count: u32,
    /// Root filesystem format (uml).
    #[serde(default = "default_root_fs")]
    pub root_fs: RootFs,
}

fn default_count() -> u32 {
    1
}
fn default_root_fs() -> RootFs {
    RootFs::Squashfs
}

fn default_memory() -> u32 {
    256
}
fn default_cpus() -> u32 {
    1
}
fn default_machine() -> Machine {
    Machine::Microvm
}
fn default_accel() -> Accel {
    Accel::Auto
}
fn default_level() -> i32 {
    9
}

impl Default for VmCfg {
    fn default() -> Self {
        VmCfg {
            memory_mib: default_memory(),
            cpus: default_cpus(),
            machine: default_machine(),
            accel: default_accel(),
            cpu: None,
            compression_level: default_level(),
            count: default_count(),
            root_fs: default_root_fs(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    /// A tap device in a private network namespace (needs root).
    Tap,
    /// qemu user networking with host port forwards (rootless).
    User,
    None,
    /// The NIC's Ethernet frames on a datagram socket at the VM's fd 3, one frame per
    /// datagram: what `beambake port` sets for a VM driven from Erlang. Never in a recipe
    /// or a boot plan file.
    #[serde(skip_deserializing)]
    Socket,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCfg {
    #[serde(default = "default_mode")]
    pub mode: NetMode,
    /// Guest address with prefix length, e.g. `10.0.120.101/24`.
    #[serde(default = "default_guest", deserialize_with = "de_guest")]
    pub guest: GuestAddr,
    /// Host side of the tap (inside the private namespace); the guest's gateway.
    #[serde(default = "default_host", deserialize_with = "de_host")]
    pub host: Ipv4Addr,
    pub hostname: Option<String>,
    /// One address per VM (same prefix as `guest`), instead of `guest` + index.
    #[serde(default, deserialize_with = "de_guests")]
    pub guests: Option<Vec<Ipv4Addr>>,
}

fn default_mode() -> NetMode {
    NetMode::Tap
}
fn default_guest() -> GuestAddr {
    GuestAddr {
        ip: Ipv4Addr::new(10, 0, 120, 101),
        prefix: 24,
    }
}
fn default_host() -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 120, 100)
}

/// A string value that `parse` accepts; otherwise an error naming `key`, the value and
/// what was expected (toml adds the line).
fn parsed<'de, D: Deserializer<'de>, T>(
    d: D,
    key: &str,
    expected: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).ok_or_else(|| D::Error::custom(format!("{key} = {s:?}: expected {expected}")))
}

fn de_guest<'de, D: Deserializer<'de>>(d: D) -> Result<GuestAddr, D::Error> {
    parsed(
        d,
        "network.guest",
        "an IPv4 address with a prefix length, e.g. \"10.0.120.101/24\"",
        parse_cidr,
    )
}

fn de_host<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
    parsed(
        d,
        "network.host",
        "an IPv4 address, e.g. \"10.0.120.100\"",
        |s| s.parse().ok(),
    )
}

fn de_guests<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Ipv4Addr>>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|a| {
            a.parse().map_err(|_| {
                D::Error::custom(format!("network.guests: {a:?} is not an IPv4 address"))
            })
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

impl Default for NetworkCfg {
    fn default() -> Self {
        NetworkCfg {
            mode: default_mode(),
            guest: default_guest(),
            host: default_host(),
            hostname: None,
            guests: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DistributionCfg {
    /// Node name; the node runs as `NAME@GUEST_IP`. Replaces a name in the release's
    /// `vm.args`; when absent, the release's own name (or the release's name) is used.
    pub node: Option<String>,
    /// The cookie; a random one is generated per build when absent.
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// Connect, send a line, expect it back.
    TcpEcho {
        port: u16,
        #[serde(default = "default_payload")]
        payload: String,
    },
    /// HTTP/1.0 GET; status must match, body must contain `body_contains`.
    Http {
        port: u16,
        #[serde(default = "default_path")]
        path: String,
        #[serde(default = "default_status")]
        status: u16,
        #[serde(default)]
        body_contains: String,
    },
    /// A host node in the namespace pings the guest node and runs an rpc:call; with
    /// several VMs, every node also pings every other and an `rpc:multicall` reaches all.
    Distribution {},
    /// A host node runs `call` (`Module:Function(Args...)`, Erlang syntax) on the guest
    /// node with `rpc:call`; the result must equal `expect` (an Erlang term). Without
    /// `expect` any answer but `{badrpc, _}` passes and the report shows it (to record a
    /// value, e.g. `erlang:memory()`).
    Rpc {
        call: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect: Option<String>,
    },
    /// TLS echo: connect, TLS handshake, send `payload`, expect it back. The server's
    /// certificate must chain to `ca` and be valid for `server_name`; `verify = false`
    /// accepts any certificate instead (exactly one of the two).
    TlsEcho {
        port: u16,
        #[serde(default = "default_payload")]
        payload: String,
        /// CA certificate(s), PEM, relative to the recipe (resolved against its directory
        /// at load).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca: Option<PathBuf>,
        /// `false`: the server's certificate is explicitly not verified.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verify: Option<bool>,
        /// The name (DNS or IP) the certificate must be valid for; default: the guest's
        /// address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_name: Option<String>,
    },
    /// HTTPS: an `http` check over TLS, the certificate verified as for `tls_echo`.
    Https {
        port: u16,
        #[serde(default = "default_path")]
        path: String,
        #[serde(default = "default_status")]
        status: u16,
        #[serde(default)]
        body_contains: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verify: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        server_name: Option<String>,
    },
}

/// A TLS check's settings. Validated recipes have `ca` set or `verify = false`; `ca` is
/// `None` exactly when the certificate is not verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsSettings<'a> {
    pub ca: Option<&'a Path>,
    pub server_name: Option<&'a str>,
}

impl Check {
    /// The TLS settings of a `tls_echo` or `https` check.
    pub fn tls(&self) -> Option<TlsSettings<'_>> {
        match self {
            Check::TlsEcho {
                ca, server_name, ..
            }
            | Check::Https {
                ca, server_name, ..
            } => Some(TlsSettings {
                ca: ca.as_deref(),
                server_name: server_name.as_deref(),
            }),
            _ => None,
        }
    }

    /// What breaks the TLS rules, if anything: exactly one of `ca` and `verify = false`;
    /// a usable server name.
    fn tls_problem(&self) -> Option<String> {
        let (Check::TlsEcho {
            port,
            ca,
            verify,
            server_name,
            ..
        }
        | Check::Https {
            port,
            ca,
            verify,
            server_name,
            ..
        }) = self
        else {
            return None;
        };
        let what = match self {
            Check::Https { .. } => format!("check https:{port}"),
            _ => format!("check tls_echo:{port}"),
        };
        match (ca, verify) {
            (Some(_), Some(false)) => {
                return Some(format!(
                    "{what}: `ca` and `verify = false` exclude each other: keep `ca` to verify \
                     the server's certificate, or `verify = false` to accept any"
                ))
            }
            (None, Some(false)) => {}
            (Some(ca), _) if ca.as_os_str().is_empty() => {
                return Some(format!("{what}: ca = \"\": name a PEM file"))
            }
            (Some(_), _) => {}
            (None, _) => {
                return Some(format!(
                    "{what}: say how the server's certificate is checked: `ca = \"FILE\"` (PEM, \
                     relative to the recipe) to verify it, or `verify = false` to accept any"
                ))
            }
        }
        if let Some(n) = server_name {
            if rustls_pki_types::ServerName::try_from(n.as_str()).is_err() {
                return Some(format!(
                    "{what}: server_name = {n:?} is neither a DNS name nor an IP address"
                ));
            }
        }
        None
    }
}

fn default_payload() -> String {
    "hello there!\n".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_status() -> u16 {
    200
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeCfg {
    /// How long the guest may take to answer the first check.
    #[serde(default = "default_ready")]
    pub ready_timeout_s: u64,
    /// How long one check may take once the guest is ready.
    #[serde(default = "default_check")]
    pub check_timeout_s: u64,
}

fn default_ready() -> u64 {
    120
}
fn default_check() -> u64 {
    30
}

impl Default for SmokeCfg {
    fn default() -> Self {
        SmokeCfg {
            ready_timeout_s: default_ready(),
            check_timeout_s: default_check(),
        }
    }
}

/// A guest address with its prefix length (1 to 30), e.g. `10.0.120.101/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestAddr {
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for GuestAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

impl Serialize for GuestAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Recipe {
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Recipe::parse(&text, path)
    }

    /// Parses and validates `text` (the recipe file `path`), and resolves its paths
    /// against `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<Recipe, RecipeError> {
        let invalid = |message: String| RecipeError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut r: Recipe = toml::from_str(text)
            .map_err(|e| invalid(unknown_key_line(text, &e).unwrap_or_else(|| one_line(&e))))?;
        r.file = path.to_path_buf();
        r.dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        r.validate()?;
        for (i, c) in r.checks.iter().enumerate() {
            if let Some(m) = c.tls_problem() {
                return Err(match check_line(text, i) {
                    Some(line) => invalid(format!("line {line}: {m}")),
                    None => invalid(m),
                });
            }
        }
        r.resolve_paths();
        Ok(r)
    }

    /// Every path of the recipe resolved against its directory.
    fn resolve_paths(&mut self) {
        let dir = self.dir.clone();
        let rel = &mut self.release;
        let k = &mut self.kernel;
        let optional = [
            &mut rel.otp_root,
            &mut rel.erts_from,
            &mut k.pin,
            &mut k.path,
            &mut k.modules,
            &mut self.rumprun.beam,
            &mut self.rumprun.source,
            &mut self.osv.source,
        ];
        let paths = optional
            .into_iter()
            .filter_map(Option::as_mut)
            .chain([&mut rel.source])
            .chain(self.data.iter_mut().filter_map(|d| d.path.as_mut()))
            .chain(self.hostfs.iter_mut().map(|h| &mut h.host))
            .chain(self.disks.iter_mut().map(|d| &mut d.path));
        for p in paths {
            p.resolve(&dir);
        }
        for c in &mut self.checks {
            if let Check::TlsEcho { ca: Some(ca), .. } | Check::Https { ca: Some(ca), .. } = c {
                *ca = resolve(&dir, ca);
            }
        }
    }

    fn invalid(&self, message: impl Into<String>) -> RecipeError {
        RecipeError::Invalid {
            path: self.file.clone(),
            message: message.into(),
        }
    }

    /// Where `[table] key` is set in the recipe file: `line N: table.key` (or `table.key`
    /// when the file cannot be read again), for errors found after parsing (a release
    /// source that does not exist, ...), which name the file.
    pub fn locate(&self, table: &str, key: &str) -> String {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        let header = format!("[{table}]");
        let line = text
            .lines()
            .enumerate()
            .skip_while(|(_, l)| l.trim() != header)
            .skip(1)
            .take_while(|(_, l)| !l.trim_start().starts_with('['))
            .find(|(_, l)| {
                l.trim_start()
                    .strip_prefix(key)
                    .is_some_and(|r| r.trim_start().starts_with('='))
            })
            .map(|(i, _)| i + 1);
        match line {
            Some(n) => format!("line {n}: {table}.{key}"),
            None => format!("{table}.{key}"),
        }
    }

    /// The checks with their files (`ca`, resolved at load) made absolute, as the boot
    /// plan keeps them.
    pub fn resolved_checks(&self) -> Vec<Check> {
        let mut checks = self.checks.clone();
        for c in &mut checks {
            if let Check::TlsEcho { ca: Some(ca), .. } | Check::Https { ca: Some(ca), .. } = c {
                if let Ok(abs) = std::path::absolute(&*ca) {
                    *ca = abs;
                }
            }
        }
        checks
    }

    /// The checks of the schema's rules that concern no particular target, and the VMs'
    /// addresses.
    fn validate(&mut self) -> Result<(), RecipeError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.invalid(format!(
                "name = {:?}: use letters, digits, '-' and '_'",
                self.name
            )));
        }
        let k = &self.kernel;
        if k.source == KernelSource::Minimal {
            let set: Vec<&str> = [
                ("pin", k.pin.is_some()),
                ("path", k.path.is_some()),
                ("modules", k.modules.is_some()),
                ("extra_modules", !k.extra_modules.is_empty()),
            ]
            .into_iter()
            .filter_map(|(key, on)| on.then_some(key))
            .collect();
            if !set.is_empty() {
                return Err(self.invalid(format!(
                    "kernel.source = \"minimal\" is beambake's kernel built from source, with \
                     everything built in: drop kernel.{}",
                    set.join(", kernel.")
                )));
            }
            if self.target != Target::Microvm {
                return Err(self.invalid(
                    "kernel.source = \"minimal\" is a kernel for target = \"microvm\" only"
                        .to_string(),
                ));
            }
            if self.vm.machine != Machine::Microvm {
                return Err(self.invalid(
                    "kernel.source = \"minimal\" boots on vm.machine = \"microvm\" only \
                     (it has no ACPI power button driver for machine pc)"
                        .to_string(),
                ));
            }
        }
        let (g, h) = (self.network.guest, self.network.host);
        if g.ip == h {
            return Err(self.invalid(format!(
                "network.guest and network.host are the same address {h}"
            )));
        }
        if !same_subnet(g.ip, h, g.prefix) {
            return Err(self.invalid(format!(
                "network.host = {h} is not in the guest's subnet {g}"
            )));
        }
        if let Some(hn) = &self.network.hostname {
            if hn.is_empty()
                || hn.len() > 63
                || !hn.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(self.invalid(format!(
                    "network.hostname = {hn:?} is not a valid host name"
                )));
            }
        }
        if !(16..=65536).contains(&self.vm.memory_mib) {
            return Err(self.invalid(format!(
                "vm.memory_mib = {}: must be between 16 and 65536",
                self.vm.memory_mib
            )));
        }
        if !(1..=64).contains(&self.vm.cpus) {
            return Err(self.invalid(format!(
                "vm.cpus = {}: must be between 1 and 64",
                self.vm.cpus
            )));
        }
        if !(1..=22).contains(&self.vm.compression_level) {
            return Err(self.invalid(format!(
                "vm.compression_level = {}: zstd levels are 1 to 22",
                self.vm.compression_level
            )));
        }
        if let Some(d) = &self.distribution {
            if let Some(node) = &d.node {
                if node.is_empty()
                    || !node
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(
                        self.invalid(format!("distribution.node = {node:?}: not a node name"))
                    );
                }
            }
            if let Some(c) = &d.cookie {
                if c.is_empty() || c.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(
                        self.invalid("distribution.cookie: must be non-empty, without spaces")
                    );
                }
            }
        }
        if self.network.mode == NetMode::User
            && self
                .checks
                .iter()
                .any(|c| matches!(c, Check::Distribution {}))
        {
            return Err(self.invalid("a \"distribution\" check needs network.mode = \"tap\" (user networking only forwards TCP ports)"));
        }
        if !(1..=16).contains(&self.vm.count) {
            return Err(self.invalid(format!(
                "vm.count = {}: must be between 1 and 16",
                self.vm.count
            )));
        }
        self.guest_addrs = self.vm_addrs().map_err(|source| RecipeError::Addresses {
            path: self.file.clone(),
            source,
        })?;
        // Whether the node is distributed is known once the release is read (its vm.args
        // may name it): see `target::prepare`.
        if self.checks.iter().any(|c| matches!(c, Check::Rpc { .. }))
            && self.network.mode != NetMode::Tap
        {
            return Err(self.invalid("a check of type \"rpc\" needs network.mode = \"tap\""));
        }
        for c in &self.checks {
            if let Check::Rpc { call, expect } = c {
                if !call.contains(':')
                    || !call.trim_end().ends_with(')')
                    || expect.as_deref().is_some_and(|e| e.trim().is_empty())
                {
                    return Err(self.invalid(format!("check rpc: call = {call:?} must look like Module:Function(Args...) and expect must be an Erlang term")));
                }
            }
        }
        if let Some(d) = &self.data {
            self.check_guest_dir("data.mount", &d.mount)?;
            if !(8..=1 << 20).contains(&d.size_mib) {
                return Err(self.invalid(format!(
                    "data.size_mib = {}: must be between 8 and 1048576",
                    d.size_mib
                )));
            }
            if d.path.is_some() && self.vm.count > 1 {
                return Err(self.invalid("data.path names one disk, but vm.count > 1: leave data.path unset (one data-N.ext4 per VM)"));
            }
        }
        for (i, h) in self.hostfs.iter().enumerate() {
            self.check_guest_dir(&format!("hostfs[{i}].guest"), &h.guest)?;
            let host = h.host.written().to_string_lossy();
            if host.contains(',') || host.chars().any(char::is_whitespace) {
                return Err(self.invalid(format!("hostfs[{i}].host = {host:?}: commas and spaces cannot pass the kernel command line")));
            }
        }
        if self.network.mode == NetMode::User && self.vm.count > 1 {
            return Err(self.invalid("network.mode = \"user\" forwards host ports to one VM: use \"tap\" with vm.count > 1"));
        }
        for (i, d) in self.disks.iter().enumerate() {
            self.check_guest_dir(&format!("disk[{i}].mount"), &d.mount)?;
            if !["iso9660", "squashfs", "ext4"].contains(&d.fstype.as_str()) {
                return Err(self.invalid(format!(
                    "disk[{i}].fstype = {:?}: use iso9660, squashfs or ext4",
                    d.fstype
                )));
            }
        }
        if self.network.mode == NetMode::None && !self.checks.is_empty() {
            return Err(self.invalid("network.mode = \"none\" cannot run network checks"));
        }
        Ok(())
    }

    /// One address per VM: `network.guests`, else `network.guest` + index.
    fn vm_addrs(&self) -> Result<Vec<Ipv4Addr>, AddrError> {
        let n = &self.network;
        let addrs = match &n.guests {
            Some(list) => {
                if self.vm.count != 1 && self.vm.count as usize != list.len() {
                    return Err(AddrError::Count {
                        listed: list.len(),
                        count: self.vm.count,
                    });
                }
                list.clone()
            }
            None => instance_addrs(n.guest.ip, self.vm.count),
        };
        check_addrs(&addrs, n.guest.prefix, n.host)?;
        Ok(addrs)
    }

    /// One address per VM (`network.guests`, else `network.guest` + index), checked at
    /// load to be distinct host addresses of the guest's subnet, none the host's.
    pub fn guest_addrs(&self) -> &[Ipv4Addr] {
        &self.guest_addrs
    }

    /// `network.hostname`, else the recipe's name with what a host name cannot hold
    /// (`echo_plugin`: Erlang release names have underscores) as `-`.
    pub fn hostname(&self) -> String {
        self.network.hostname.clone().unwrap_or_else(|| {
            self.name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        })
    }

    fn check_guest_dir(&self, what: &str, p: &str) -> Result<(), RecipeError> {
        if !p.starts_with('/')
            || p == "/"
            || p.contains(',')
            || p.chars().any(char::is_whitespace)
            || p.split('/').any(|c| c == "..")
        {
            return Err(self.invalid(format!("{what} = {p:?}: want an absolute guest path other than /, without spaces, commas or '..'")));
        }
        Ok(())
    }
}

/// `count` addresses from `first` upwards.
pub fn instance_addrs(first: Ipv4Addr, count: u32) -> Vec<Ipv4Addr> {
    (0..count)
        .map(|i| Ipv4Addr::from(u32::from(first).wrapping_add(i)))
        .collect()
}

/// Every VM address must be unique, in the host's subnet, and not the host's.
pub fn check_addrs(addrs: &[Ipv4Addr], prefix: u8, host: Ipv4Addr) -> Result<(), AddrError> {
    if addrs.is_empty() {
        return Err(AddrError::Empty);
    }
    for (i, &addr) in addrs.iter().enumerate() {
        if let Some(j) = addrs[..i].iter().position(|&b| b == addr) {
            return Err(AddrError::Duplicate {
                first: j + 1,
                second: i + 1,
                addr,
            });
        }
        if addr == host {
            return Err(AddrError::HostAddress { vm: i + 1, addr });
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        let bcast = (u32::from(host) & mask) | !mask;
        if !same_subnet(addr, host, prefix)
            || u32::from(addr) == bcast
            || u32::from(addr) & !mask == 0
        {
            return Err(AddrError::OutsideSubnet {
                vm: i + 1,
                addr,
                host,
                prefix,
            });
        }
    }
    Ok(())
}

pub fn parse_cidr(s: &str) -> Option<GuestAddr> {
    let (ip, prefix) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    if !(1..=30).contains(&prefix) || ip.is_unspecified() || ip.is_broadcast() {
        return None;
    }
    Some(GuestAddr { ip, prefix })
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX << (32 - u32::from(prefix));
    u32::from(a) & mask == u32::from(b) & mask
}

/// The line of the `i`th check (its `[[check]]` header or inline table).
fn check_line(text: &str, i: usize) -> Option<usize> {
    #[derive(Deserialize)]
    struct Spans {
        #[serde(default)]
        check: Vec<toml::Spanned<toml::Value>>,
    }
    let spans: Spans = toml::from_str(text).ok()?;
    let start = spans.check.get(i)?.span().start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}

/// An unknown key as one line: `line N: unknown field `K` in `TABLE` (did you mean `X`?),
/// expected ...: <the line>`, the closest known key suggested (see [`closest_key`]). toml
/// reports a key of a tagged table (`[[check]]`) at the table's header: the key's own line
/// is searched for.
fn unknown_key_line(text: &str, e: &toml::de::Error) -> Option<String> {
    let msg = e.message();
    let key = msg.strip_prefix("unknown field `")?.split('`').next()?;
    let lines: Vec<&str> = text.lines().collect();
    let at = text.get(..e.span()?.start)?.matches('\n').count();
    let is_key_line = |l: &str| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    // A table whose name is the unknown key (`[[checks]]`): the key of its parent table.
    let header_name = |l: &str| {
        let t = l.trim();
        t.starts_with('[')
            .then(|| {
                t.trim_start_matches('[')
                    .split(']')
                    .next()
                    .unwrap_or("")
                    .trim()
            })
            .map(str::to_string)
    };
    if let Some(name) = header_name(lines.get(at)?) {
        let (parent, last) = name.rsplit_once('.').unwrap_or(("", &name));
        if last.trim() == key {
            let place = if parent.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{}`", parent.trim())
            };
            return Some(unknown_key_message(key, &place, msg, at, lines[at]));
        }
    }
    let line = if is_key_line(lines[at]) {
        at
    } else {
        // toml points at the first table of an array of tables: search them all.
        let header = lines[at].trim();
        (at + 1..lines.len())
            .take_while(|&i| {
                let t = lines[i].trim_start();
                !(t.starts_with('[') && t.trim_end() != header)
            })
            .find(|&i| is_key_line(lines[i]))?
    };
    let place = lines[..line]
        .iter()
        .rev()
        .map(|l| l.trim_start())
        .find(|l| l.starts_with('['))
        .and_then(|h| h.trim_start_matches('[').split(']').next())
        .map_or("at the top level".to_string(), |t| {
            format!("in `{}`", t.trim())
        });
    Some(unknown_key_message(key, &place, msg, line, lines[line]))
}

/// `line N: unknown field `K` PLACE (did you mean `X`?), expected ...: <the line>`.
fn unknown_key_message(key: &str, place: &str, msg: &str, line: usize, src: &str) -> String {
    let expected = msg.split_once(", expected").map(|(_, rest)| rest);
    let known: Vec<&str> = expected
        .map(|r| r.split('`').skip(1).step_by(2).collect())
        .unwrap_or_default();
    let hint = closest_key(key, &known)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    let expected = expected.map_or(String::new(), |r| format!(", expected{r}"));
    format!(
        "line {}: unknown field `{key}` {place}{hint}{expected}: {}",
        line + 1,
        src.trim()
    )
}

/// The known key closest to the unknown `key`: fewest edits (adjacent swaps count one),
/// either to the whole key or to its start (`memory` -> `memory_mib`, one more), within
/// a third of `key`'s length (at least 2). None when nothing is that close.
pub fn closest_key<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let k: Vec<char> = key.chars().collect();
    let limit = (k.len() / 3).max(2);
    known
        .iter()
        .map(|c| {
            let c_chars: Vec<char> = c.chars().collect();
            let prefix = &c_chars[..k.len().min(c_chars.len())];
            let score = edits(&k, &c_chars).min(edits(&k, prefix) + 1);
            (score, *c)
        })
        .filter(|(score, _)| *score <= limit)
        .min_by_key(|(score, _)| *score)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
/// adjacent characters, one edit each.
fn edits(a: &[char], b: &[char]) -> usize {
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// toml's errors span several lines (with a source excerpt); keep them, indented.
fn one_line(e: &toml::de::Error) -> String {
    e.to_string().trim_end().replace('\n', "\n  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "echo-microvm"
target = "microvm"
[release]
source = "../examples/echo"
[network]
guest = "10.0.120.101/24"
host = "10.0.120.100"
[distribution]
node = "echo"
[[check]]
type = "tcp_echo"
port = 8080
[[check]]
type = "distribution"
"#;

    fn parse(t: &str) -> Result<Recipe, RecipeError> {
        Recipe::parse(t, Path::new("recipes/x.toml"))
    }

    /// The error of a recipe that must not parse, as the user sees it.
    fn parse_err(t: &str) -> String {
        parse(t).unwrap_err().to_string()
    }

    #[test]
    fn small_guest_flags_come_before_the_recipes_own_arguments() {
        let r = parse(&format!(
            "{GOOD}\n[launch]\nsmall_guest = true\nextra_args = [\"+A\", \"4\"]\n[vm]\ncpus = 2\n"
        ))
        .unwrap();
        let a = r.launch.args(r.vm.cpus);
        assert_eq!(&a[..4], ["+S", "2:2", "+SDcpu", "2:2"]);
        assert_eq!(&a[a.len() - 2..], ["+A", "4"]);
        assert!(parse(GOOD).unwrap().launch.args(1).is_empty());
    }

    #[test]
    fn good_recipe_and_defaults() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.vm.memory_mib, 256);
        assert_eq!(r.vm.machine, Machine::Microvm);
        assert_eq!(r.checks.len(), 2);
        assert_eq!(
            r.network.guest,
            GuestAddr {
                ip: Ipv4Addr::new(10, 0, 120, 101),
                prefix: 24
            }
        );
        assert_eq!(r.network.host, Ipv4Addr::new(10, 0, 120, 100));
        assert_eq!(r.guest_addrs(), [Ipv4Addr::new(10, 0, 120, 101)]);
        assert!(r.distribution.unwrap().cookie.is_none());
    }

    #[test]
    fn kernel_source_minimal_stands_alone_on_microvm() {
        let r =
            parse(&GOOD.replace("[network]", "[kernel]\nsource = \"minimal\"\n[network]")).unwrap();
        assert_eq!(r.kernel.source, KernelSource::Minimal);
        assert_eq!(parse(GOOD).unwrap().kernel.source, KernelSource::Debian);
        for (extra, said) in [
            ("pin = \"k.toml\"\n", "drop kernel.pin"),
            (
                "path = \"bz\"\nextra_modules = [\"x\"]\n",
                "drop kernel.path, kernel.extra_modules",
            ),
            ("[vm]\nmachine = \"pc\"\n", "vm.machine = \"microvm\" only"),
        ] {
            let text = GOOD.replace(
                "[network]",
                &format!("[kernel]\nsource = \"minimal\"\n{extra}[network]"),
            );
            let e = parse_err(&text);
            assert!(e.contains("recipes/x.toml") && e.contains(said), "{e}");
        }
        let uml = GOOD
            .replace("target = \"microvm\"", "target = \"uml\"")
            .replace("[network]", "[kernel]\nsource = \"minimal\"\n[network]");
        assert!(parse_err(&uml).contains("target = \"microvm\" only"));
        let typo =
            parse_err(&GOOD.replace("[network]", "[kernel]\nsorce = \"minimal\"\n[network]"));
        assert!(typo.contains("did you mean `source`"), "{typo}");
        let bad = parse_err(&GOOD.replace("[network]", "[kernel]\nsource = \"tiny\"\n[network]"));
        assert!(bad.contains("minimal"), "{bad}");
    }

    #[test]
    fn paths_are_resolved_against_the_recipe_dir_at_load() {
        let text = GOOD.replace(
            "[network]",
            "otp_root = \"/opt/otp\"\n[kernel]\npin = \"pins/k.toml\"\n[network]",
        );
        let r = parse(&text).unwrap();
        assert_eq!(&*r.release.source, Path::new("recipes/../examples/echo"));
        assert_eq!(r.release.source.written(), Path::new("../examples/echo"));
        assert_eq!(r.release.otp_root.as_deref(), Some(Path::new("/opt/otp")));
        assert_eq!(
            r.kernel.pin.as_deref(),
            Some(Path::new("recipes/pins/k.toml"))
        );
        // A path from the command line is used as given.
        let p = RecipePath::from(PathBuf::from("k/vmlinuz"));
        assert_eq!(
            (&*p, p.written()),
            (Path::new("k/vmlinuz"), Path::new("k/vmlinuz"))
        );
    }

    #[test]
    fn unknown_key_names_its_table_and_the_closest_known_key() {
        let e = parse_err(&format!("{GOOD}\n[vm]\nmemroy = 5\n"));
        let line = GOOD.lines().count() + 3;
        assert_eq!(
            e,
            format!(
                "recipes/x.toml: line {line}: unknown field `memroy` in `vm` (did you mean \
                 `memory_mib`?), expected one of `memory_mib`, `cpus`, `machine`, `accel`, \
                 `cpu`, `compression_level`, `count`, `root_fs`: memroy = 5"
            )
        );
        let e = parse_err(&format!("checks = 1\n{GOOD}"));
        assert!(
            e.starts_with(
                "recipes/x.toml: line 1: unknown field `checks` at the top level (did you mean `check`?)"
            ),
            "{e}"
        );
        let e = parse_err(&format!("{GOOD}\n[vm]\nmemory = 5\n"));
        assert!(e.contains("(did you mean `memory_mib`?)"), "{e}");
        // A table (or array of tables) named by the unknown key: the parent's key.
        let e = parse_err(&format!("{GOOD}\n[[checks]]\ntype = \"tcp_echo\"\n"));
        let line = GOOD.lines().count() + 2;
        assert!(
            e.starts_with(&format!(
                "recipes/x.toml: line {line}: unknown field `checks` at the top level (did you mean `check`?)"
            )),
            "{e}"
        );
        assert!(e.ends_with(": [[checks]]"), "{e}");
        let e = parse_err(&format!("{GOOD}\n[vm]\nzzzzzz = 5\n"));
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn default_hostname_is_the_name_made_a_host_name() {
        let r = parse(&GOOD.replace("name = \"echo-microvm\"", "name = \"echo_plugin\"")).unwrap();
        assert_eq!(r.hostname(), "echo-plugin");
    }

    #[test]
    fn closest_key_is_within_a_few_edits() {
        let known = ["memory_mib", "cpus", "machine", "accel", "cpu"];
        assert_eq!(closest_key("memroy", &known), Some("memory_mib"));
        assert_eq!(closest_key("memory", &known), Some("memory_mib"));
        assert_eq!(closest_key("cpsu", &known), Some("cpus"));
        assert_eq!(closest_key("acel", &known), Some("accel"));
        assert_eq!(closest_key("kernel", &known), None);
        assert_eq!(closest_key("x", &[]), None);
    }

    #[test]
    fn typo_key_is_named_with_its_line() {
        let e = parse_err(&GOOD.replace("[vm]", "").replace("host = ", "hots = "));
        assert!(e.starts_with("recipes/x.toml: "), "{e}");
        assert!(e.contains("unknown field `hots`"), "{e}");
        assert!(e.contains("line 8"), "{e}");
        let e = parse_err(&format!("{GOOD}\n[vm]\nmemory = 5\n"));
        assert!(e.contains("unknown field `memory`"), "{e}");
        // Inside a [[check]] (a tagged table) the key's own line is named, not the header.
        let text = format!("{GOOD}[[check]]\ntype = \"tcp_echo\"\nport = 8080\npayloadd = \"x\"\n");
        let line = text.lines().count();
        let e = parse_err(&text);
        assert!(
            e.starts_with(&format!(
                "recipes/x.toml: line {line}: unknown field `payloadd`"
            )),
            "{e}"
        );
        assert!(e.ends_with("payloadd = \"x\""), "{e}");
        assert!(e.contains("in `check` (did you mean `payload`?)"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        for (from, to, needle) in [
            ("10.0.120.101/24", "10.0.120.300/24", "network.guest"),
            ("10.0.120.101/24", "10.0.120.101", "network.guest"),
            (
                "host = \"10.0.120.100\"",
                "host = \"10.0.121.100\"",
                "not in the guest's subnet",
            ),
            (
                "host = \"10.0.120.100\"",
                "host = \"10.0.120.101\"",
                "same address",
            ),
            ("node = \"echo\"", "node = \"ec ho\"", "distribution.node"),
            (
                "target = \"microvm\"",
                "target = \"xen\"",
                "unknown variant `xen`",
            ),
            ("port = 8080", "port = 80800", "invalid value"),
            // Only `beambake port` wires a VM's frames to a socket.
            (
                "[network]",
                "[network]\nmode = \"socket\"",
                "unknown variant `socket`",
            ),
            (
                "type = \"tcp_echo\"",
                "type = \"smtp\"",
                "unknown variant `smtp`",
            ),
        ] {
            let e = parse_err(&GOOD.replace(from, to));
            assert!(e.contains(needle), "{to}: {e}");
        }
        // An address that does not parse is named with its key and line.
        let e = parse_err(&GOOD.replace("10.0.120.101/24", "10.0.120.300/24"));
        assert!(e.starts_with("recipes/x.toml: "), "{e}");
        assert!(e.contains("line 7"), "{e}");
        assert!(
            e.contains("network.guest = \"10.0.120.300/24\": expected"),
            "{e}"
        );
        let e = parse_err(&GOOD.replace(
            "host = \"10.0.120.100\"",
            "host = \"10.0.120.100\"\nguests = [\"10.0.120.5\", \"ten\"]",
        ));
        assert!(
            e.contains("network.guests: \"ten\" is not an IPv4 address"),
            "{e}"
        );
        let e = parse(&format!("{GOOD}\n[vm]\ncount = 3\n")).unwrap();
        assert_eq!(
            e.guest_addrs(),
            [101, 102, 103].map(|i| Ipv4Addr::new(10, 0, 120, i))
        );
        let e = parse_err(&GOOD.replace(
            "host = \"10.0.120.100\"",
            "host = \"10.0.120.100\"\nguests = [\"10.0.120.5\", \"10.0.120.5\"]",
        ));
        assert!(
            e.contains("VMs 1 and 2 both ask for the address 10.0.120.5"),
            "{e}"
        );
        let e = parse_err(
            &GOOD
                .replace("10.0.120.101/24", "10.0.120.254/24")
                .replace("[distribution]", "[vm]\ncount = 2\n[distribution]"),
        );
        assert!(e.contains("not a host address"), "{e}");
    }

    #[test]
    fn tls_checks_need_a_ca_or_verify_false_named_with_their_line() {
        let tls =
            |body: &str| format!("{GOOD}\n[[check]]\ntype = \"tls_echo\"\nport = 8443\n{body}");
        let line = GOOD.lines().count() + 2;
        let e = parse_err(&tls(""));
        assert!(
            e.starts_with(&format!(
                "recipes/x.toml: line {line}: check tls_echo:8443: "
            )),
            "{e}"
        );
        assert!(
            e.contains("`ca = \"FILE\"`") && e.contains("`verify = false`"),
            "{e}"
        );
        let e = parse_err(&tls("verify = true\n"));
        assert!(e.contains(&format!("line {line}: ")), "{e}");
        let e = parse_err(&tls("ca = \"ca.pem\"\nverify = false\n"));
        assert!(e.contains("exclude each other"), "{e}");
        let e = parse_err(&tls("verify = false\nserver_name = \"not a name\"\n"));
        assert!(e.contains("server_name = \"not a name\""), "{e}");
        let e = parse_err(&tls("verify = false\nsrever_name = \"echo\"\n"));
        assert!(e.contains("unknown field `srever_name`"), "{e}");
        let e = parse_err(&GOOD.replace("type = \"tcp_echo\"", "type = \"https\""));
        assert!(e.contains("check https:8080: say how"), "{e}");

        let r = parse(&tls("verify = false\n")).unwrap();
        let s = r.checks[2].tls().unwrap();
        assert_eq!((s.ca, s.server_name), (None, None));
        let r = parse(&tls(
            "ca = \"certs/ca.pem\"\nserver_name = \"10.0.120.101\"\n",
        ))
        .unwrap();
        let s = r.checks[2].tls().unwrap();
        assert_eq!(s.ca, Some(Path::new("recipes/certs/ca.pem")));
        assert_eq!(s.server_name, Some("10.0.120.101"));
        assert!(r.checks[0].tls().is_none());
        // The plan's copy names the CA by an absolute path from the recipe's directory.
        let resolved = r.resolved_checks();
        let ca = resolved[2].tls().unwrap().ca.unwrap();
        assert!(
            ca.is_absolute() && ca.ends_with("recipes/certs/ca.pem"),
            "{ca:?}"
        );
        assert_eq!(resolved[0], r.checks[0]);
    }
}
