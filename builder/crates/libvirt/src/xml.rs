//! The libvirt domain XML of a built microvm image (`beambake libvirt-xml DIR`): the
//! boot plan (`boot.json`) mapped onto libvirt's schema, for one of the plan's VMs.
//!
//! - Domain type `qemu` (TCG) unless the caller's accelerator is KVM (the CLI asks
//!   beambake's probe, [`beambake_vm::boot::accel`]); CPU `qemu64` under TCG, the host's
//!   under KVM, or the plan's `cpu`.
//! - Direct kernel boot: the plan's kernel and initramfs (absolute paths), and the VM's
//!   full command line ([`BootPlan::instance_cmdline`]: the common parameters, then its
//!   `beambake.*` ones; under TCG `tsc_early_khz` as `beambake boot` adds it).
//! - Machine `pc`, whatever the plan says: libvirt 9.0 gives every device a PCI address
//!   and drives qemu's `microvm` machine poorly. The same kernel boots on `pc` (8250
//!   serial and the zstd initramfs are built in); a NIC there is virtio-net-pci, whose
//!   driver (`virtio_pci`) only images built with `vm.machine = "pc"` carry, so a tap is
//!   refused for an image built for microvm.
//! - The serial console to a file or a pty; qemu's `isa-debug-exit` device (through
//!   libvirt's qemu command-line namespace, as libvirt has no element for it), so the
//!   init's power-off ends qemu as under `beambake boot`; no reboot (`on_reboot` destroy).
//! - No network unless asked: `tap` names a pre-made tap (`<interface type='ethernet'>`,
//!   `managed='no'`: libvirt opens it and creates nothing).
//!
//! Owns: that mapping, and refusing what it cannot express (not a build, not a microvm
//! image, no such VM, a tap for an image without the NIC's driver). Must not: talk to
//! libvirt, boot anything, or create network devices.

use std::path::{Path, PathBuf};

use beambake_recipe::{Machine, Target};
use beambake_vm::boot::qemu::Accelerator;
use beambake_vm::boot::{BootError, BootPlan, Instance};

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleOut {
    /// Appended to this file (absolute, or relative to the image directory).
    File(PathBuf),
    /// A pty libvirt allocates (`virsh console`).
    Pty,
    /// A Unix stream socket qemu connects to (someone listens there: `beambake port
    /// --libvirt`).
    Unix(PathBuf),
}

/// The NIC as a qemu `dgram` netdev on Unix datagram sockets (libvirt has no element for
/// it: through its qemu command-line namespace): qemu binds `vm` and sends each frame to
/// `peer`, which sends to `vm`. No tap, no bridge, nothing on the host's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DgramNic {
    pub vm: PathBuf,
    pub peer: PathBuf,
}

/// What the XML is for, besides the plan.
#[derive(Debug, Clone)]
pub struct Options {
    /// The domain's name [default: `beambake-NAME-N`, as `beambake boot` names qemu].
    pub name: Option<String>,
    /// Which VM of the plan, from 1.
    pub instance: usize,
    pub accel: Accelerator,
    /// Why that accelerator (written in the XML's comment).
    pub accel_reason: String,
    /// [default: `libvirt-console.log` in the image directory, `-N` with several VMs].
    pub console: Option<ConsoleOut>,
    /// A pre-made tap to plug the VM's NIC into.
    pub tap: Option<String>,
    /// The NIC on Unix datagram sockets instead (not with `tap`).
    pub dgram: Option<DgramNic>,
    /// The init's control line (the plan's `control`) on the second serial port, a Unix
    /// socket qemu connects to.
    pub control: Option<PathBuf>,
    /// The host's TSC in kHz, told to the kernel under TCG (see `beambake_vm::boot::qemu`).
    pub tsc_khz: Option<u64>,
    /// The qemu binary (`<emulator>`); absent: libvirt's default for the domain type.
    pub emulator: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            name: None,
            instance: 1,
            accel: Accelerator::Tcg,
            accel_reason: String::new(),
            console: None,
            tap: None,
            dgram: None,
            control: None,
            tsc_khz: None,
            emulator: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error(transparent)]
    Plan(#[from] BootError),
    #[error(
        "{dir}: a {target} image; libvirt-xml writes domains for microvm images only \
         (direct kernel boot of a Linux kernel and initramfs with beambake's init)"
    )]
    NotMicrovm { dir: PathBuf, target: String },
    #[error("{path}: the image's {what} is missing: build the image again")]
    Missing { path: PathBuf, what: &'static str },
    #[error("{dir}: VM {instance} asked for, but the plan has {count} VM(s) (numbered from 1)")]
    NoSuchInstance {
        dir: PathBuf,
        instance: usize,
        count: usize,
    },
    #[error(
        "--tap {tap}: the image was built for machine microvm (its initramfs has the virtio-mmio \
         drivers), and libvirt runs it as machine pc, whose NIC needs virtio_pci: build the \
         recipe with vm.machine = \"pc\" to give the domain a network"
    )]
    TapNeedsPc { tap: String },
    #[error(
        "the image was built for machine microvm (its initramfs has the virtio-mmio \
         drivers), and libvirt runs it as machine pc, whose NIC needs virtio_pci: build the \
         recipe with vm.machine = \"pc\" to drive it through libvirt"
    )]
    NicNeedsPc,
    #[error("a NIC on a tap and on Unix sockets at once: choose one")]
    TwoNics,
    #[error(
        "{dir}: the control line is asked for but the plan does not enable it (its \
         command line has no beambake.ctl)"
    )]
    NoControl { dir: PathBuf },
    #[error("--tap {tap:?}: not a network interface name (1 to 15 bytes, no '/', ':' or blanks)")]
    BadTap { tap: String },
    #[error("domain name {name:?}: must not be empty or contain '/'")]
    BadName { name: String },
}

/// Loads the plan in `dir` and checks that it is a microvm image with its files.
pub fn load(dir: &Path) -> Result<BootPlan, XmlError> {
    let plan = BootPlan::load(dir)?;
    if plan.target != Target::Microvm {
        return Err(XmlError::NotMicrovm {
            dir: dir.to_path_buf(),
            target: format!("{:?}", plan.target).to_lowercase(),
        });
    }
    let kernel = dir.join(&plan.kernel);
    if !kernel.is_file() {
        return Err(XmlError::Missing {
            path: kernel,
            what: "kernel",
        });
    }
    match &plan.initrd {
        Some(i) if dir.join(i).is_file() => {}
        Some(i) => {
            return Err(XmlError::Missing {
                path: dir.join(i),
                what: "initramfs",
            })
        }
        None => {
            return Err(XmlError::Missing {
                path: dir.join(beambake_vm::boot::PLAN_FILE),
                what: "initramfs (the plan names none)",
            })
        }
    }
    Ok(plan)
}

/// The domain XML of VM `opts.instance` of `plan`, whose files are in `dir`.
pub fn domain_xml(plan: &BootPlan, dir: &Path, opts: &Options) -> Result<String, XmlError> {
    let dir = std::path::absolute(dir).map_err(|source| BootError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let insts = plan.instances(&dir);
    let inst = opts
        .instance
        .checked_sub(1)
        .and_then(|i| insts.get(i))
        .ok_or_else(|| XmlError::NoSuchInstance {
            dir: dir.clone(),
            instance: opts.instance,
            count: insts.len(),
        })?;
    instance_xml(plan, &dir, inst, insts.len(), opts)
}

/// The domain XML of `inst`, one of `count` VMs of `plan` (files in the absolute `dir`).
pub fn instance_xml(
    plan: &BootPlan,
    dir: &Path,
    inst: &Instance,
    count: usize,
    opts: &Options,
) -> Result<String, XmlError> {
    let dir = dir.to_path_buf();
    if let Some(tap) = &opts.tap {
        let bad = tap.is_empty()
            || tap.len() > 15
            || tap
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
        if bad {
            return Err(XmlError::BadTap { tap: tap.clone() });
        }
        if plan.machine == Machine::Microvm {
            return Err(XmlError::TapNeedsPc { tap: tap.clone() });
        }
    }
    if opts.dgram.is_some() {
        if opts.tap.is_some() {
            return Err(XmlError::TwoNics);
        }
        if plan.machine == Machine::Microvm {
            return Err(XmlError::NicNeedsPc);
        }
    }
    if opts.control.is_some() && !plan.control {
        return Err(XmlError::NoControl { dir: dir.clone() });
    }
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("beambake-{}-{}", plan.name, inst.index + 1));
    if name.is_empty() || name.contains('/') {
        return Err(XmlError::BadName { name });
    }
    let many = count > 1;
    let console = match &opts.console {
        Some(ConsoleOut::Pty) => ConsoleOut::Pty,
        Some(ConsoleOut::Unix(p)) => ConsoleOut::Unix(dir.join(p)),
        Some(ConsoleOut::File(p)) => ConsoleOut::File(dir.join(p)),
        None => ConsoleOut::File(dir.join(if many {
            format!("libvirt-console-{}.log", inst.index + 1)
        } else {
            "libvirt-console.log".to_string()
        })),
    };
    let mut cmdline = plan.instance_cmdline(inst);
    if opts.accel == Accelerator::Tcg && !cmdline.contains("tsc_early_khz=") {
        if let Some(khz) = opts.tsc_khz {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }

    let mut x = String::new();
    let mut w = |s: String| x.push_str(&s);
    w(format!(
        "<!-- beambake libvirt-xml: VM {} of {} of the {} image in {}.\n",
        inst.index + 1,
        count,
        comment(&plan.name),
        comment(&dir.display().to_string()),
    ));
    w(match plan.machine {
        Machine::Pc => "     Machine pc, as the image was built for (libvirt 9.0 drives qemu's microvm machine poorly).\n".to_string(),
        Machine::Microvm => "     Machine pc, not the plan's microvm: libvirt 9.0 drives qemu's microvm machine poorly\n     \
             (it gives devices PCI addresses); `beambake boot` runs the same image with -M microvm.\n"
            .to_string(),
    });
    w(format!(
        "     Accelerator: {}{}.\n",
        opts.accel.name(),
        if opts.accel_reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", comment(&opts.accel_reason))
        }
    ));
    w(format!(
        "     Network: {}. -->\n",
        match &opts.tap {
            Some(t) => format!(
                "the pre-made tap {} (not managed: libvirt creates nothing)",
                comment(t)
            ),
            None if opts.dgram.is_some() => {
                "qemu's dgram netdev on Unix sockets (frames relayed by beambake port)".to_string()
            }
            None => "none (no NIC; --tap NAME plugs one into a pre-made tap)".to_string(),
        }
    ));
    let domain_type = match opts.accel {
        Accelerator::Kvm => "kvm",
        Accelerator::Tcg => "qemu",
    };
    w(format!(
        "<domain type='{domain_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"
    ));
    w(format!("  <name>{}</name>\n", esc(&name)));
    w(format!(
        "  <memory unit='MiB'>{}</memory>\n",
        plan.memory_mib
    ));
    w(format!(
        "  <currentMemory unit='MiB'>{}</currentMemory>\n",
        plan.memory_mib
    ));
    w(format!("  <vcpu placement='static'>{}</vcpu>\n", plan.cpus));
    w("  <os>\n".into());
    w("    <type arch='x86_64' machine='pc'>hvm</type>\n".into());
    w(format!(
        "    <kernel>{}</kernel>\n",
        esc(&dir.join(&plan.kernel).display().to_string())
    ));
    if let Some(initrd) = &plan.initrd {
        w(format!(
            "    <initrd>{}</initrd>\n",
            esc(&dir.join(initrd).display().to_string())
        ));
    }
    w(format!("    <cmdline>{}</cmdline>\n", esc(&cmdline)));
    w("  </os>\n".into());
    w("  <features>\n    <acpi/>\n  </features>\n".into());
    match (opts.accel, &plan.cpu) {
        (_, Some(model)) => w(format!(
            "  <cpu mode='custom' match='exact' check='none'>\n    <model fallback='forbid'>{}</model>\n  </cpu>\n",
            esc(model)
        )),
        (Accelerator::Kvm, None) => w("  <cpu mode='host-passthrough' check='none'/>\n".into()),
        (Accelerator::Tcg, None) => w(
            "  <cpu mode='custom' match='exact' check='none'>\n    <model fallback='forbid'>qemu64</model>\n  </cpu>\n"
                .into(),
        ),
    }
    w("  <clock offset='utc'/>\n".into());
    w("  <on_poweroff>destroy</on_poweroff>\n".into());
    w("  <on_reboot>destroy</on_reboot>\n".into());
    w("  <on_crash>destroy</on_crash>\n".into());
    w("  <devices>\n".into());
    if let Some(e) = &opts.emulator {
        w(format!(
            "    <emulator>{}</emulator>\n",
            esc(&e.display().to_string())
        ));
    }
    match &console {
        ConsoleOut::Pty => w("    <serial type='pty'>\n      <target port='0'/>\n    </serial>\n".into()),
        ConsoleOut::File(p) => w(format!(
            "    <serial type='file'>\n      <source path='{}' append='on'/>\n      <target port='0'/>\n    </serial>\n",
            esc(&p.display().to_string())
        )),
        ConsoleOut::Unix(p) => w(unix_serial(p, 0)),
    }
    if let Some(p) = &opts.control {
        w(unix_serial(&dir.join(p), 1));
    }
    if let Some(tap) = &opts.tap {
        w(format!(
            "    <interface type='ethernet'>\n      <target dev='{}' managed='no'/>\n      <model type='virtio'/>\n    </interface>\n",
            esc(tap)
        ));
    }
    w("    <controller type='usb' model='none'/>\n".into());
    w("    <memballoon model='none'/>\n".into());
    w("  </devices>\n".into());
    w("  <qemu:commandline>\n".into());
    w("    <qemu:arg value='-device'/>\n".into());
    w(format!(
        "    <qemu:arg value='{}'/>\n",
        esc(beambake_contract::exit::QEMU_DEVICE)
    ));
    if let Some(nic) = &opts.dgram {
        let arg = |v: &str| format!("    <qemu:arg value='{}'/>\n", esc(v));
        w(arg("-netdev"));
        w(arg(&format!(
            "dgram,id=bbnet0,local.type=unix,local.path={},remote.type=unix,remote.path={}",
            dir.join(&nic.vm).display(),
            dir.join(&nic.peer).display()
        )));
        w(arg("-device"));
        let mac = plan
            .mac
            .map(|m| format!(",mac={}", beambake_vm::port::vm::format_mac(&m)))
            .unwrap_or_default();
        w(arg(&format!("virtio-net-pci,netdev=bbnet0{mac}")));
    }
    w("  </qemu:commandline>\n".into());
    w("</domain>\n".into());
    Ok(x)
}

/// A serial port (`port` 0: ttyS0, 1: ttyS1) on a Unix socket qemu connects to.
fn unix_serial(path: &Path, port: u8) -> String {
    format!(
        "    <serial type='unix'>\n      <source mode='connect' path='{}'/>\n      <target port='{port}'/>\n    </serial>\n",
        esc(&path.display().to_string())
    )
}

/// Escapes text for XML content and single- or double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '\'' => o.push_str("&apos;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// Text safe inside an XML comment (no `--`, no markup).
fn comment(s: &str) -> String {
    let mut o = esc(s);
    while o.contains("--") {
        o = o.replace("--", "- -");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use beambake_testkit::golden::check as golden;

    const DIR: &str = "/srv/beambake-out/echo-pc";

    fn plan(target: &str, machine: &str, guests: &[&str]) -> BootPlan {
        let guests: Vec<String> = guests.iter().map(|g| format!("\"{g}\"")).collect();
        serde_json::from_str(&format!(
            r#"{{
  "name": "echo-pc", "target": "{target}", "kernel": "vmlinuz", "initrd": "echo-pc.cpio.zst",
  "cmdline": "console=ttyS0 quiet panic=-1 reboot=t",
  "memory_mib": 256, "cpus": 2, "machine": "{machine}", "accel": "auto", "cpu": null,
  "net": {{"mode": "tap", "guests": [{}], "prefix": 24, "host": "10.0.120.100", "hostname": "echo"}},
  "node": "echo", "cookie_file": "cookie", "checks": [],
  "smoke": {{"ready_timeout_s": 60, "check_timeout_s": 30}}
}}"#,
            guests.join(", ")
        ))
        .unwrap()
    }

    fn tcg_tap() -> Options {
        Options {
            accel: Accelerator::Tcg,
            accel_reason: "KVM probe: /dev/kvm cannot be opened (--accel auto)".into(),
            tap: Some("tap0".into()),
            tsc_khz: Some(2_100_000),
            ..Options::default()
        }
    }

    #[test]
    fn the_domain_of_a_pc_image_on_a_tap_is_pinned() {
        let p = plan("microvm", "pc", &["10.0.120.101"]);
        let xml = domain_xml(&p, Path::new(DIR), &tcg_tap()).unwrap();
        golden("libvirt-echo-pc.xml", &xml);
        // The comment stays a comment: no `--` inside it.
        let end = xml.find("-->").unwrap();
        assert!(!xml[4..end].contains("--"), "{xml}");
    }

    #[test]
    fn kvm_pty_second_vm_no_network() {
        let p = plan("microvm", "microvm", &["10.0.120.101", "10.0.120.102"]);
        let opts = Options {
            accel: Accelerator::Kvm,
            instance: 2,
            console: Some(ConsoleOut::Pty),
            tsc_khz: Some(2_100_000),
            emulator: Some("/usr/bin/qemu-system-x86_64".into()),
            ..Options::default()
        };
        let xml = domain_xml(&p, Path::new(DIR), &opts).unwrap();
        for want in [
            "<domain type='kvm'",
            "<name>beambake-echo-pc-2</name>",
            "<vcpu placement='static'>2</vcpu>",
            "<cpu mode='host-passthrough' check='none'/>",
            "<serial type='pty'>",
            "<emulator>/usr/bin/qemu-system-x86_64</emulator>",
            "beambake.ip=10.0.120.102/24 beambake.gw=10.0.120.100 beambake.hostname=echo-2",
            "beambake.node=echo@10.0.120.102",
            "machine='pc'",
            "Machine pc, not the plan's microvm",
        ] {
            assert!(xml.contains(want), "{want} not in\n{xml}");
        }
        // Under KVM the TSC is not the host's business; no NIC without --tap.
        assert!(!xml.contains("tsc_early_khz"), "{xml}");
        assert!(!xml.contains("<interface"), "{xml}");
    }

    #[test]
    fn names_paths_and_parameters_are_escaped() {
        let mut p = plan("microvm", "pc", &["10.0.120.101"]);
        p.cmdline.push_str(" x=<a&b>");
        let opts = Options {
            name: Some("it's \"mine\"".into()),
            console: Some(ConsoleOut::File("logs/con sole.log".into())),
            ..Options::default()
        };
        let xml = domain_xml(&p, Path::new(DIR), &opts).unwrap();
        assert!(
            xml.contains("<name>it&apos;s &quot;mine&quot;</name>"),
            "{xml}"
        );
        assert!(xml.contains("x=&lt;a&amp;b&gt;"), "{xml}");
        assert!(
            xml.contains(
                "<source path='/srv/beambake-out/echo-pc/logs/con sole.log' append='on'/>"
            ),
            "{xml}"
        );
    }

    #[test]
    fn a_port_domain_on_unix_sockets_is_pinned() {
        let mut p = plan("microvm", "pc", &["10.0.126.2"]);
        p.control = true;
        p.mac = Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        p.net.mode = beambake_recipe::NetMode::Socket;
        let opts = Options {
            name: Some("echo-pc-port42".into()),
            accel: Accelerator::Tcg,
            tsc_khz: Some(2_100_000),
            console: Some(ConsoleOut::Unix("/tmp/beambake-port-x/console.sock".into())),
            control: Some("/tmp/beambake-port-x/ctl.sock".into()),
            dgram: Some(DgramNic {
                vm: "/tmp/beambake-port-x/nic-vm.sock".into(),
                peer: "/tmp/beambake-port-x/nic.sock".into(),
            }),
            ..Options::default()
        };
        let xml = domain_xml(&p, Path::new(DIR), &opts).unwrap();
        golden("libvirt-echo-port.xml", &xml);
    }

    #[test]
    fn port_wiring_refusals() {
        let dgram = || DgramNic {
            vm: "/r/vm.sock".into(),
            peer: "/r/p.sock".into(),
        };
        let micro = plan("microvm", "microvm", &["10.0.120.101"]);
        let e = domain_xml(
            &micro,
            Path::new(DIR),
            &Options {
                dgram: Some(dgram()),
                ..Options::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, XmlError::NicNeedsPc), "{e}");
        assert!(e.to_string().contains("vm.machine = \"pc\""), "{e}");
        let pc = plan("microvm", "pc", &["10.0.120.101"]);
        let e = domain_xml(
            &pc,
            Path::new(DIR),
            &Options {
                dgram: Some(dgram()),
                tap: Some("tap0".into()),
                ..Options::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, XmlError::TwoNics), "{e}");
        let e = domain_xml(
            &pc,
            Path::new(DIR),
            &Options {
                control: Some("/r/ctl.sock".into()),
                ..Options::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, XmlError::NoControl { .. }), "{e}");
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let one = plan("microvm", "microvm", &["10.0.120.101"]);
        let e = domain_xml(&one, Path::new(DIR), &tcg_tap()).unwrap_err();
        assert!(matches!(e, XmlError::TapNeedsPc { .. }), "{e}");
        assert!(e.to_string().contains("vm.machine = \"pc\""), "{e}");

        let pc = plan("microvm", "pc", &["10.0.120.101"]);
        let e = domain_xml(
            &pc,
            Path::new(DIR),
            &Options {
                instance: 2,
                ..Options::default()
            },
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("VM 2 asked for, but the plan has 1 VM(s)"),
            "{e}"
        );
        for bad in ["", "a/b", "sixteen-chars-xx", "ta p"] {
            let e = domain_xml(
                &pc,
                Path::new(DIR),
                &Options {
                    tap: Some(bad.into()),
                    ..Options::default()
                },
            )
            .unwrap_err();
            assert!(matches!(e, XmlError::BadTap { .. }), "{bad}: {e}");
        }
        let e = domain_xml(
            &pc,
            Path::new(DIR),
            &Options {
                name: Some("a/b".into()),
                ..Options::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, XmlError::BadName { .. }), "{e}");
    }

    #[test]
    fn a_dir_that_is_not_a_build_is_named() {
        let d = tempfile::tempdir().unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(e.contains(&d.path().display().to_string()), "{e}");
        assert!(e.contains("not a beambake build"), "{e}");

        let missing = d.path().join("nowhere");
        let e = load(&missing).unwrap_err().to_string();
        assert!(
            e.contains("nowhere") && e.contains("no such directory"),
            "{e}"
        );

        std::fs::write(d.path().join("boot.json"), "{ not json").unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("boot.json") && e.contains("not a beambake boot plan"),
            "{e}"
        );
    }

    #[test]
    fn only_microvm_images_with_their_files_are_taken() {
        let d = tempfile::tempdir().unwrap();
        let write = |p: &BootPlan| std::fs::write(d.path().join("boot.json"), p.to_json()).unwrap();
        let mut uml = plan("uml", "microvm", &["10.0.120.101"]);
        uml.initrd = None;
        write(&uml);
        let e = load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("a uml image") && e.contains("microvm images only"),
            "{e}"
        );

        let p = plan("microvm", "pc", &["10.0.120.101"]);
        write(&p);
        let e = load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("vmlinuz") && e.contains("kernel is missing"),
            "{e}"
        );
        std::fs::write(d.path().join("vmlinuz"), b"k").unwrap();
        let e = load(d.path()).unwrap_err().to_string();
        assert!(
            e.contains("echo-pc.cpio.zst") && e.contains("initramfs is missing"),
            "{e}"
        );
        std::fs::write(d.path().join("echo-pc.cpio.zst"), b"i").unwrap();
        assert_eq!(load(d.path()).unwrap().name, "echo-pc");
    }
}
