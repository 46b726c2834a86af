//! Booting built images: the boot plan (written beside the image as `boot.json`, so
//! `beambake boot DIR` needs nothing else), its VM instances (one image, N VMs, each with
//! its own address, node name, console log and data disk), the guest process type that
//! owns a VM's lifetime, the hypervisors behind one trait (`vmm`: the plan names its
//! VMM; qemu, User Mode Linux) and the accelerator choice (`accel`: KVM only when a
//! probe guest proved it).
//!
//! Must not: build images or run checks (see [`crate::smoke`]).

pub mod accel;
pub mod guest;
pub mod osv;
pub mod qemu;
pub mod uml;
pub mod vmm;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use beambake_contract::cmdline::{GuestParams, Ipv4Cidr, MountSpec};
use serde::{Deserialize, Serialize};

use beambake_recipe::{Accel, Check, Machine, NetMode, SmokeCfg, Target};

pub const PLAN_FILE: &str = "boot.json";

/// Everything needed to boot one built image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootPlan {
    pub name: String,
    pub target: Target,
    /// The hypervisor that boots it ([`vmm::vmm_for`]); absent in plans written before
    /// beambake recorded it, which get their target's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<vmm::VmmKind>,
    /// Paths relative to the plan's directory.
    pub kernel: PathBuf,
    /// The initramfs (microvm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The read-only root filesystem image (uml), and its type (`squashfs`, `ext4`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_image: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_fs: Option<String>,
    /// Kernel parameters common to every VM (each VM adds its address and node name).
    pub cmdline: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub machine: Machine,
    /// Machine microvm without ACPI tables (`-M microvm,acpi=off`): for a kernel that
    /// finds its virtio-mmio devices on the command line (beambake's minimal kernel);
    /// the VM still ends through the exit device.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub acpi_off: bool,
    pub accel: Accel,
    /// qemu `-cpu` model; by default `qemu64` under TCG, `host` under KVM.
    #[serde(default)]
    pub cpu: Option<String>,
    pub net: NetPlan,
    /// The node's name without its host when the guest runs distributed: `NAME@IP` per
    /// VM, or `NAME@HOSTNAME` with `short_names`.
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub short_names: bool,
    /// File holding the cookie (mode 0600), relative to the plan's directory.
    pub cookie_file: Option<PathBuf>,
    pub checks: Vec<Check>,
    pub smoke: SmokeCfg,
    /// A persistent data disk per VM (uml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataPlan>,
    /// Host directories mounted in the guest (uml hostfs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostfs: Vec<HostfsPlan>,
    /// Extra read-only disk images (uml: `ubd2r`, `ubd3r`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskPlan>,
    /// The init's control line on the VM's second serial line, wired to the VM's fd 4
    /// (`beambake port`; never in a plan file).
    #[serde(skip)]
    pub control: bool,
    /// The NIC's MAC address (`beambake port`; never in a plan file): several VMs of one
    /// image on one Erlang switch need distinct ones.
    #[serde(skip)]
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskPlan {
    /// Absolute path of the image.
    pub path: PathBuf,
    pub mount: String,
    pub fstype: String,
}

/// The guest device of extra disk `i` (after the root `ubda` and the data disk `ubdb`).
pub fn extra_disk_device(i: usize) -> String {
    format!("/dev/ubd{}", (b'c' + i as u8) as char)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetPlan {
    pub mode: NetMode,
    /// One address per VM.
    pub guests: Vec<Ipv4Addr>,
    pub prefix: u8,
    pub host: Ipv4Addr,
    pub hostname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataPlan {
    /// Absolute path of the one disk; `None`: `data-N.ext4` in the plan's directory.
    pub path: Option<PathBuf>,
    pub size_mib: u64,
    pub mount: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostfsPlan {
    /// Absolute host directory.
    pub host: PathBuf,
    pub guest: String,
}

/// One VM of a plan.
#[derive(Debug, Clone)]
pub struct Instance {
    /// 0-based.
    pub index: usize,
    pub ip: Ipv4Addr,
    pub hostname: String,
    /// `NAME@IP` when distributed.
    pub node: Option<String>,
    /// Its tap in the sandbox.
    pub tap: String,
    pub console_log: PathBuf,
    pub data_disk: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Plan { path: PathBuf, message: String },
    /// qemu is missing or unusable on this host.
    #[error("{0}")]
    Qemu(String),
    #[error("starting {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Setting up or running the sandbox, its network or the VM failed.
    #[error("{0}")]
    Net(String),
    /// This host lacks what running the VM needs (root for a tap, user namespaces).
    #[error("{0}")]
    Host(String),
    /// The request is invalid (`--count` out of range, ...).
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Accel(#[from] accel::AccelError),
}

impl BootPlan {
    pub fn load(dir: &Path) -> Result<BootPlan, BootError> {
        let path = dir.join(PLAN_FILE);
        if !dir.is_dir() {
            return Err(BootError::Plan {
                path: dir.to_path_buf(),
                message:
                    "no such directory: give a build's output directory (`beambake build RECIPE` \
                          writes beambake-out/NAME) or a recipe (.toml)"
                        .into(),
            });
        }
        if !path.exists() {
            return Err(BootError::Plan {
                path: dir.to_path_buf(),
                message: format!(
                    "not a beambake build (no {PLAN_FILE}): make one with `beambake build RECIPE` \
                     (it writes beambake-out/NAME), or pass the recipe (.toml) to boot it directly"
                ),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| BootError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| BootError::Plan {
            path,
            message: format!("not a beambake boot plan: {e}"),
        })
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// VM `index`'s host name: the plan's, numbered from 1 when there are several VMs.
    fn instance_hostname(&self, index: usize) -> String {
        if self.net.guests.len() > 1 {
            format!("{}-{}", self.net.hostname, index + 1)
        } else {
            self.net.hostname.clone()
        }
    }

    /// The plan's VMs; files (console logs, data disks) live in `dir`.
    pub fn instances(&self, dir: &Path) -> Vec<Instance> {
        let many = self.net.guests.len() > 1;
        self.net
            .guests
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let n = i + 1;
                let hostname = self.instance_hostname(i);
                Instance {
                    index: i,
                    ip: *ip,
                    node: self.node.as_ref().map(|name| {
                        if self.short_names {
                            format!("{name}@{hostname}")
                        } else {
                            format!("{name}@{ip}")
                        }
                    }),
                    hostname,
                    tap: format!("tap{i}"),
                    console_log: dir.join(if many {
                        format!("console-{n}.log")
                    } else {
                        "console.log".to_string()
                    }),
                    data_disk: self.data.as_ref().map(|d| match &d.path {
                        Some(p) => p.clone(),
                        None => dir.join(format!("data-{n}.ext4")),
                    }),
                }
            })
            .collect()
    }

    /// True for the files [`BootPlan::instances`] puts in an output dir (console logs,
    /// data disks): they belong to the runs, not the build, and a rebuild keeps them.
    pub fn is_run_file(name: &str) -> bool {
        let numbered = |prefix: &str, suffix: &str| {
            name.strip_prefix(prefix)
                .and_then(|s| s.strip_suffix(suffix))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        };
        name == "console.log"
            || numbered("console-", ".log")
            || numbered("data-", ".ext4")
            || osv::is_instance_image(name)
    }

    /// Starts `count` VMs instead: addresses from the first one upwards.
    pub fn set_count(&mut self, count: u32) -> Result<(), BootError> {
        if !(1..=16).contains(&count) {
            return Err(BootError::Request(format!(
                "--count {count}: must be between 1 and 16"
            )));
        }
        if count > 1 && self.data.as_ref().is_some_and(|d| d.path.is_some()) {
            return Err(BootError::Request(
                "--count > 1 with a data disk named in the recipe (data.path): each VM needs its own disk".into(),
            ));
        }
        let first = self
            .net
            .guests
            .first()
            .copied()
            .ok_or_else(|| BootError::Net("the boot plan lists no guest address".into()))?;
        let addrs = beambake_recipe::instance_addrs(first, count);
        beambake_recipe::check_addrs(&addrs, self.net.prefix, self.net.host)
            .map_err(|e| BootError::Request(format!("--count {count}: {e}")))?;
        self.net.guests = addrs;
        Ok(())
    }

    /// `,mac=…` for the NIC's device options, when the plan sets one.
    pub fn mac_option(&self) -> String {
        self.mac
            .map(|m| {
                let hex: Vec<String> = m.iter().map(|b| format!("{b:02x}")).collect();
                format!(",mac={}", hex.join(":"))
            })
            .unwrap_or_default()
    }

    /// The kernel parameters of one VM: the common ones, then its `beambake.*` ones.
    pub fn instance_cmdline(&self, inst: &Instance) -> String {
        let mut c = self.cmdline.clone();
        for arg in self.instance_params(inst).to_cmdline_args() {
            c.push(' ');
            c.push_str(&arg);
        }
        c
    }

    /// What the init of one VM is told: its network, name, peers and mounts.
    pub fn instance_params(&self, inst: &Instance) -> GuestParams {
        // A port VM without an address: the NIC stays unconfigured until `ifconfig`.
        let net = self.net.mode != NetMode::None && !inst.ip.is_unspecified();
        let mount = |source: String, target: &str, fstype: &str, data: String| MountSpec {
            source,
            target: target.to_string(),
            fstype: fstype.to_string(),
            data,
        };
        let mut mounts = Vec::new();
        if let Some(d) = &self.data {
            mounts.push(mount("/dev/ubdb".into(), &d.mount, "ext4", String::new()));
        }
        for (i, d) in self.disks.iter().enumerate() {
            mounts.push(mount(
                extra_disk_device(i),
                &d.mount,
                &d.fstype,
                String::new(),
            ));
        }
        for h in &self.hostfs {
            let host = h.host.display().to_string();
            mounts.push(mount("none".into(), &h.guest, "hostfs", host));
        }
        GuestParams {
            ip: net.then_some(Ipv4Cidr {
                addr: inst.ip,
                prefix: self.net.prefix,
            }),
            gw: net.then_some(self.net.host),
            hostname: Some(inst.hostname.clone()),
            // The other VMs of the plan, so names resolve between guests (short node names).
            peers: if net {
                self.net
                    .guests
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != inst.index)
                    .map(|(i, ip)| (self.instance_hostname(i), *ip))
                    .collect()
            } else {
                Vec::new()
            },
            node: inst.node.clone(),
            mounts,
            ctl: self
                .control
                .then(|| beambake_contract::control::CONTROL_TTY.to_string()),
            ..GuestParams::default()
        }
    }

    pub fn cookie(&self, dir: &Path) -> Result<Option<String>, BootError> {
        match &self.cookie_file {
            None => Ok(None),
            Some(f) => {
                let p = dir.join(f);
                std::fs::read_to_string(&p)
                    .map(|s| Some(s.trim().to_string()))
                    .map_err(|source| BootError::Io { path: p, source })
            }
        }
    }
}

#[cfg(test)]
mod run_file_tests {
    use super::BootPlan;

    #[test]
    fn run_files_are_console_logs_and_data_disks_only() {
        for n in [
            "console.log",
            "console-3.log",
            "data-1.ext4",
            "data-12.ext4",
        ] {
            assert!(BootPlan::is_run_file(n), "{n}");
        }
        for n in [
            "boot.json",
            "manifest.json",
            "cookie",
            "vmlinuz",
            "echo.squashfs",
            "console-.log",
            "console-x.log",
            "data-1.ext4.tmp",
            ".beambake-x.tmp",
            "data.ext4",
        ] {
            assert!(!BootPlan::is_run_file(n), "{n}");
        }
    }
}

#[cfg(test)]
mod cmdline_tests {
    use super::BootPlan;
    use std::path::Path;

    /// Every `beambake.*` parameter the builder gives a VM, in its order (pinned: the
    /// init parses exactly these).
    #[test]
    fn instance_cmdline_is_pinned() {
        let plan: BootPlan = serde_json::from_str(
            r#"{
  "name": "e", "target": "uml", "kernel": "linux", "root_image": "e.squashfs",
  "cmdline": "quiet con=null ssl=null beambake.if=vec0",
  "memory_mib": 256, "cpus": 1, "machine": "microvm", "accel": "auto", "cpu": null,
  "net": {"mode": "tap", "guests": ["10.0.121.101", "10.0.121.102", "10.0.121.103"],
          "prefix": 24, "host": "10.0.121.100", "hostname": "echo"},
  "node": "echo", "cookie_file": "cookie", "checks": [],
  "smoke": {"ready_timeout_s": 60, "check_timeout_s": 30},
  "data": {"path": null, "size_mib": 64, "mount": "/data"},
  "hostfs": [{"host": "/h/shared", "guest": "/srv/shared"}],
  "disks": [{"path": "/h/extra.iso", "mount": "/mnt/extra", "fstype": "iso9660"}]
}"#,
        )
        .unwrap();
        let vms = plan.instances(Path::new("/out"));
        assert_eq!(
            plan.instance_cmdline(&vms[1]),
            "quiet con=null ssl=null beambake.if=vec0 \
             beambake.ip=10.0.121.102/24 beambake.gw=10.0.121.100 beambake.hostname=echo-2 \
             beambake.peer=echo-1,10.0.121.101 beambake.peer=echo-3,10.0.121.103 \
             beambake.node=echo@10.0.121.102 beambake.mount=/dev/ubdb,/data,ext4 \
             beambake.mount=/dev/ubdc,/mnt/extra,iso9660 \
             beambake.mount=none,/srv/shared,hostfs,/h/shared"
        );
        let mut one = plan.clone();
        one.net.mode = beambake_recipe::NetMode::None;
        one.net.guests.truncate(1);
        one.node = None;
        one.data = None;
        one.disks.clear();
        one.hostfs.clear();
        let vms = one.instances(Path::new("/out"));
        assert_eq!(
            one.instance_cmdline(&vms[0]),
            "quiet con=null ssl=null beambake.if=vec0 beambake.hostname=echo"
        );
    }
}
