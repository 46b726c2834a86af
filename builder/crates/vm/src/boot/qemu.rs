//! The qemu adapter ([`Qemu`], a [`Vmm`]): the `qemu-system-x86_64` command line for a
//! boot plan (the program is `BEAMBAKE_QEMU` when set), for a Linux guest or a baked
//! rumprun kernel, the guest's status from qemu's exit status, and the clean stop of a
//! Linux guest on machine pc (QMP's `system_powerdown`, an ACPI power-button press).
//! Choosing KVM or TCG is [`super::accel`]'s job.
//!
//! Must not: manage process lifetimes (see [`super::guest`]) or networks.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::vmm::{AccelUse, Vmm};
use super::{BootError, BootPlan, Instance};
use beambake_recipe::{Machine, NetMode};

pub const QEMU: &str = "qemu-system-x86_64";
/// Environment variable naming the qemu program instead of `qemu-system-x86_64` on
/// `PATH` (a path, or a name looked up on `PATH`).
pub const QEMU_ENV: &str = "BEAMBAKE_QEMU";

/// The qemu program: `BEAMBAKE_QEMU` when set and not empty, else [`QEMU`].
pub fn program() -> PathBuf {
    std::env::var_os(QEMU_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(QEMU))
}

/// Kernel parameters that make the Debian cloud kernel boot fast and reliably under TCG
/// (measured: see BENCHMARKS.md and shared notes): no crypto self-tests, no PS/2 probing,
/// TSC trusted (calibration against the PIT fails now and then under TCG on microvm).
pub const FAST_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t tsc=reliable \
    no_timer_check cryptomgr.notests i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// Kernel parameters for beambake's minimal kernel (built from source, everything built
/// in: no crypto self-tests or PS/2 controller to skip), as measured in
/// `shared/notes/boot-speed.md`.
pub const MINIMAL_CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 reboot=t tsc=reliable no_timer_check";

/// How the console is wired.
pub enum Console<'a> {
    /// To a log file only.
    File(&'a Path),
    /// To the terminal (stdin/stdout) and a log file.
    Terminal(&'a Path),
}

/// Resolved acceleration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

/// qemu as the [`Vmm`] of a plan: what it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qemu {
    /// A Linux kernel (and initramfs) with beambake's init: [`command`].
    Linux,
    /// A baked rumprun kernel: [`rumprun_command`].
    Rumprun,
    /// OSv from its own disk image: [`super::osv::command`].
    Osv,
}

impl Vmm for Qemu {
    fn check(&self, plan: &BootPlan, dir: &Path) -> Result<(), BootError> {
        if *self == Qemu::Osv && !dir.join(&plan.kernel).is_file() {
            return Err(BootError::Plan {
                path: dir.join(&plan.kernel),
                message: "the OSv disk image is missing: build again".into(),
            });
        }
        if *self == Qemu::Rumprun && !dir.join(&plan.kernel).is_file() {
            return Err(BootError::Plan {
                path: dir.join(&plan.kernel),
                message: "no baked rumprun kernel: the image was built with --no-bake or without the rumprun toolchain \
                     (`rumprun-bake` on PATH or RUMPRUN_TOOLCHAIN); install it and build again without --no-bake"
                    .into(),
            });
        }
        check_installed()
    }

    fn accelerator(&self) -> AccelUse {
        AccelUse::KvmOrTcg
    }

    fn command(
        &self,
        plan: &BootPlan,
        dir: &Path,
        inst: &Instance,
        accel: Accelerator,
        console: Console,
    ) -> Result<Command, BootError> {
        Ok(match self {
            Qemu::Linux => command(plan, dir, inst, accel, console),
            Qemu::Rumprun => rumprun_command(plan, dir, accel, console),
            Qemu::Osv => return super::osv::command(plan, dir, inst, accel, console),
        })
    }

    fn vnet_hdr(&self) -> bool {
        true
    }

    fn ended_on_console(&self, console_log: &Path) -> bool {
        *self == Qemu::Rumprun
            && crate::rumprun::console_exit_status(&console_tail(console_log)).is_some()
    }

    fn ends_on_console(&self) -> bool {
        *self == Qemu::Rumprun
    }

    fn guest_status(&self, exit: ExitStatus, console_log: &Path) -> Option<i32> {
        match self {
            // OSv powers off through ACPI when its program ends: no status reaches qemu.
            Qemu::Osv => None,
            // rumprun halts and qemu stays up (killed by Guest): the console says it.
            Qemu::Rumprun => crate::rumprun::console_exit_status(&console_tail(console_log)),
            _ => guest_status(exit.code()),
        }
    }

    fn stop_socket(&self, plan: &BootPlan, _dir: &Path, inst: &Instance) -> Option<PathBuf> {
        match self {
            Qemu::Linux => qmp_socket(plan, inst),
            Qemu::Rumprun | Qemu::Osv => None,
        }
    }

    fn request_stop(&self, socket: &Path) -> io::Result<()> {
        request_powerdown(socket, Duration::from_secs(5))
    }

    fn clean_up(&self, dir: &Path) {
        match self {
            Qemu::Osv => super::osv::clean_up(dir),
            Qemu::Linux => remove_qmp_sockets(dir),
            Qemu::Rumprun => {}
        }
    }

    fn spawn_error(&self, program: String, source: std::io::Error) -> BootError {
        if source.kind() == std::io::ErrorKind::NotFound {
            BootError::Qemu(format!(
                "{program} not found on PATH: install it with `apt-get install qemu-system-x86`"
            ))
        } else {
            BootError::Spawn { program, source }
        }
    }
}

/// qemu's command for VM `inst` of `plan` (whose files live in `dir`), with the tap at
/// fd 3 when the plan uses a tap network.
pub fn command(
    plan: &BootPlan,
    dir: &Path,
    inst: &Instance,
    accel: Accelerator,
    console: Console,
) -> Command {
    let machine = match (plan.machine, plan.acpi_off) {
        (Machine::Microvm, false) => "microvm",
        (Machine::Microvm, true) => "microvm,acpi=off",
        (Machine::Pc, _) => "pc",
    };
    let mut c = base_command(plan, inst, machine, accel);
    c.arg("-kernel").arg(dir.join(&plan.kernel));
    if let Some(initrd) = &plan.initrd {
        c.arg("-initrd").arg(dir.join(initrd));
    }
    let mut cmdline = plan.instance_cmdline(inst);
    if accel == Accelerator::Tcg && !cmdline.contains("tsc_early_khz=") {
        // Under TCG the guest's TSC is the host's. Calibrating it against the PIT fails
        // now and then on a busy host, and microvm has no HPET or PM timer to fall back
        // on: the kernel then hangs silently. Tell it the frequency instead.
        if let Some(khz) = host_tsc_khz() {
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    c.args(["-append", &cmdline]);
    serial_console(&mut c, console);
    let nic = match plan.machine {
        Machine::Microvm => "virtio-net-device",
        Machine::Pc => "virtio-net-pci",
    };
    nic_args(&mut c, plan, nic, &plan.mac_option());
    if plan.control {
        // The init's control line: the second serial port (ttyS1 at 0x2f8), on the
        // connected socket at fd 4.
        c.args(["-chardev", "socket,id=ctl,fd=4"]);
        c.args(["-device", "isa-serial,chardev=ctl,iobase=0x2f8,irq=3"]);
    }
    if let Some(qmp) = qmp_socket(plan, inst) {
        // Where a clean stop is asked for ([`request_powerdown`]); qemu's option syntax
        // doubles a comma.
        let path = qmp.display().to_string().replace(',', ",,");
        c.args(["-qmp", &format!("unix:{path},server=on,wait=off")]);
    }
    // Lets the init end qemu with the guest's status: (status << 1) | 1.
    c.args(["-device", beambake_contract::exit::QEMU_DEVICE]);
    c
}

/// The longest path a unix socket address holds (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// VM `inst`'s QMP socket, beside its console log (`console.qmp`, `console-2.qmp`): how a
/// Linux guest on machine pc is asked to stop cleanly, by an ACPI power-button press,
/// which the init of an image built for pc turns into the release's SIGTERM. `None` on
/// machine microvm (its images carry no button driver) and when the path is too long for
/// a unix socket: such a VM is killed instead.
pub fn qmp_socket(plan: &BootPlan, inst: &Instance) -> Option<PathBuf> {
    if plan.machine != Machine::Pc {
        return None;
    }
    let p = inst.console_log.with_extension("qmp");
    (p.as_os_str().len() <= MAX_SOCKET_PATH).then_some(p)
}

/// Whether `name` is the name of a QMP socket [`qmp_socket`] puts beside a console log.
fn is_qmp_socket_name(name: &str) -> bool {
    name.strip_prefix("console")
        .and_then(|s| s.strip_suffix(".qmp"))
        .is_some_and(|n| {
            n.is_empty()
                || n.strip_prefix('-')
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Removes the QMP sockets left in `dir` (a killed qemu leaves its own behind).
fn remove_qmp_sockets(dir: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_socket())
            && is_qmp_socket_name(&e.file_name().to_string_lossy())
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Presses the ACPI power button of the VM behind the QMP socket `qmp`: QMP's
/// `system_powerdown`, what libvirt's shutdown does. Returns once qemu accepted it (the
/// guest stops in its own time); every read and write is bounded by `timeout`.
pub fn request_powerdown(qmp: &Path, timeout: Duration) -> io::Result<()> {
    Qmp::connect(qmp, timeout)?.execute("system_powerdown", None)?;
    Ok(())
}

/// A QMP session on a VM's socket, in command mode.
pub struct Qmp {
    out: UnixStream,
    replies: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode; every read and write is
    /// bounded by `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> io::Result<Qmp> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut q = Qmp {
            out: stream.try_clone()?,
            replies: BufReader::new(stream),
        };
        qmp_reply(&mut q.replies, "the greeting")?;
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Runs `command` with `arguments`; its reply (an error reply is an error).
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> io::Result<serde_json::Value> {
        let mut msg = serde_json::json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        writeln!(self.out, "{msg}")?;
        qmp_reply(&mut self.replies, command)
    }
}

/// The next QMP message that is not an event: the greeting or a command's reply; an
/// error reply or the end of the stream is an error.
fn qmp_reply(replies: &mut impl BufRead, what: &str) -> io::Result<serde_json::Value> {
    let mut line = String::new();
    loop {
        line.clear();
        if replies.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("QMP closed before {what}"),
            ));
        }
        let msg: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("QMP sent {:?} ({e})", line.trim()),
            )
        })?;
        if msg.get("event").is_some() {
            continue;
        }
        if let Some(err) = msg.get("error") {
            return Err(io::Error::other(format!("QMP refused {what}: {err}")));
        }
        return Ok(msg);
    }
}

/// The start of the qemu command of VM `inst`: its name, the machine, the accelerator
/// and CPU model, memory, CPUs, no default devices, no reboot (every qemu guest).
pub(super) fn base_command(
    plan: &BootPlan,
    inst: &Instance,
    machine: &str,
    accel: Accelerator,
) -> Command {
    let mut c = Command::new(program());
    c.args([
        "-name",
        &format!("beambake-{}-{}", plan.name, inst.index + 1),
    ]);
    c.args(["-M", machine]);
    match accel {
        Accelerator::Kvm => c.args([
            "-accel",
            "kvm",
            "-cpu",
            plan.cpu.as_deref().unwrap_or("host"),
        ]),
        // qemu64 boots the echo release ~0.25 s sooner than `max` under TCG (measured:
        // fewer CPU features for the JIT to probe and emit that TCG must emulate).
        Accelerator::Tcg => c.args([
            "-accel",
            "tcg",
            "-cpu",
            plan.cpu.as_deref().unwrap_or("qemu64"),
        ]),
    };
    c.args(["-m", &plan.memory_mib.to_string()]);
    c.args(["-smp", &plan.cpus.to_string()]);
    c.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    c
}

/// The NIC for the plan's network mode: the netdev (the tap or the frames socket at fd 3,
/// or user networking with the checks' ports forwarded) and `-device DEVICE,netdev=n0OPTS`.
pub(super) fn nic_args(c: &mut Command, plan: &BootPlan, device: &str, opts: &str) {
    let netdev = match plan.net.mode {
        NetMode::Tap => "tap,id=n0,fd=3".to_string(),
        NetMode::Socket => "socket,id=n0,fd=3".to_string(),
        NetMode::User => {
            let mut fwd = String::new();
            for port in forwarded_ports(plan) {
                fwd.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{port}"));
            }
            let mask = u32::MAX << (32 - u32::from(plan.net.prefix.clamp(1, 30)));
            let network = std::net::Ipv4Addr::from(u32::from(plan.net.host) & mask);
            format!(
                "user,id=n0,net={network}/{},host={}{fwd}",
                plan.net.prefix, plan.net.host
            )
        }
        NetMode::None => return,
    };
    c.args(["-netdev", &netdev]);
    c.args(["-device", &format!("{device},netdev=n0{opts}")]);
}

/// qemu's command for a baked rumprun kernel: [`crate::rumprun::qemu_args`] (the command
/// `run-qemu.sh` runs too) wired for boot: the launch config (rumprun's flat JSON) as the
/// command line, the plan's disks (the ISOs) as read-only virtio disks in order (`ld0a`,
/// `ld1a`, ...), the tap at fd 3 as `vioif0`, the serial console.
pub fn rumprun_command(
    plan: &BootPlan,
    dir: &Path,
    accel: Accelerator,
    console: Console,
) -> Command {
    use crate::rumprun::{qemu_args, QemuGuest, QemuWiring};
    let kernel = dir.join(&plan.kernel);
    let guest = QemuGuest {
        memory_mib: plan.memory_mib,
        kernel: &kernel.to_string_lossy(),
        append: &plan.cmdline,
        disks: plan
            .disks
            .iter()
            .map(|d| d.path.display().to_string())
            .collect(),
    };
    let wiring = QemuWiring::Boot {
        name: &format!("beambake-{}", plan.name),
        accel: if accel == Accelerator::Kvm {
            "kvm"
        } else {
            "tcg"
        },
        tap_fd3: plan.net.mode == NetMode::Tap,
    };
    let mut c = Command::new(program());
    c.args(qemu_args(&guest, &wiring).concat());
    serial_console(&mut c, console);
    c
}

/// The last 4 KiB of the console log (lossy UTF-8; empty when unreadable).
fn console_tail(log: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> io::Result<String> {
        let mut f = std::fs::File::open(log)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(4096)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_default()
}

/// The serial console: to a log file, or to the terminal and a log file.
pub(super) fn serial_console(c: &mut Command, console: Console) {
    match console {
        Console::File(log) => {
            c.arg("-chardev")
                .arg(format!("file,id=con,path={}", log.display()));
            c.stdin(Stdio::null());
        }
        Console::Terminal(log) => {
            c.arg("-chardev")
                .arg(format!("stdio,id=con,signal=on,logfile={}", log.display()));
        }
    }
    c.args(["-serial", "chardev:con"]);
}

/// The host's TSC frequency in kHz, measured against CLOCK_MONOTONIC over 50 ms and
/// rounded to 1 MHz (`None` off x86_64 or when the TSC looks unusable).
pub fn host_tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86_64.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        let c0 = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: as above.
        let t1 = unsafe { core::arch::x86_64::_rdtsc() };
        let ns = c0.elapsed().as_nanos() as u64;
        let khz = (t1.checked_sub(t0)?).checked_mul(1_000_000)? / ns.max(1);
        let khz = (khz + 500) / 1000 * 1000;
        (100_000..=10_000_000).contains(&khz).then_some(khz)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// Ports the user network forwards (the checks' ports).
pub fn forwarded_ports(plan: &BootPlan) -> Vec<u16> {
    use beambake_recipe::Check;
    let mut v: Vec<u16> = plan
        .checks
        .iter()
        .filter_map(|c| match c {
            Check::TcpEcho { port, .. }
            | Check::Http { port, .. }
            | Check::TlsEcho { port, .. }
            | Check::Https { port, .. } => Some(*port),
            Check::Distribution {} | Check::Rpc { .. } => None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The guest's status from qemu's exit status: the init writes it to isa-debug-exit, so
/// qemu exits with `(status << 1) | 1`. `None` when qemu ended another way.
pub use beambake_contract::exit::guest_status;

/// Checks that qemu is installed.
pub fn check_installed() -> Result<(), BootError> {
    let qemu = program();
    match Command::new(&qemu)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BootError::Qemu(format!(
            "{} not found{}: install it with `apt-get install qemu-system-x86`",
            qemu.display(),
            if qemu.components().count() > 1 {
                ""
            } else {
                " on PATH"
            }
        ))),
        Err(e) => Err(BootError::Qemu(format!("{}: {e}", qemu.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmp_replies_skip_events_and_report_errors() {
        let text = concat!(
            "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n",
            "{\"event\": \"POWERDOWN\", \"timestamp\": {}}\n",
            "{\"return\": {}}\n",
            "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"x\"}}\n",
            "not json\n",
        );
        let mut r = io::Cursor::new(text.as_bytes());
        assert!(qmp_reply(&mut r, "the greeting")
            .unwrap()
            .get("QMP")
            .is_some());
        assert!(qmp_reply(&mut r, "a").unwrap().get("return").is_some());
        let e = qmp_reply(&mut r, "system_powerdown")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("QMP refused system_powerdown") && e.contains("CommandNotFound"),
            "{e}"
        );
        let e = qmp_reply(&mut r, "b").unwrap_err().to_string();
        assert!(e.contains("not json"), "{e}");
        let e = qmp_reply(&mut r, "c").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    fn plan(machine: &str) -> BootPlan {
        serde_json::from_str(&format!(
            r#"{{"name": "x", "target": "microvm", "vmm": "qemu", "kernel": "k", "cmdline": "",
                "memory_mib": 256, "cpus": 1, "machine": "{machine}", "accel": "auto",
                "net": {{"mode": "none", "guests": ["10.0.2.15"], "prefix": 24,
                         "host": "10.0.2.2", "hostname": "x"}},
                "node": null, "cookie_file": null, "checks": [],
                "smoke": {{"ready_timeout_s": 1, "check_timeout_s": 1}}}}"#
        ))
        .unwrap()
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn machine_pc_is_stopped_through_qmp_beside_the_console_log() {
        let dir = Path::new("/out/x,y");
        let pc = plan("pc");
        let inst = &pc.instances(dir)[0];
        let sock = Qemu::Linux.stop_socket(&pc, dir, inst);
        assert_eq!(sock.as_deref(), Some(Path::new("/out/x,y/console.qmp")));
        let c = command(
            &pc,
            dir,
            inst,
            Accelerator::Tcg,
            Console::File(&inst.console_log),
        );
        let a = args(&c);
        let i = a.iter().position(|a| a == "-qmp").expect("-qmp");
        assert_eq!(a[i + 1], "unix:/out/x,,y/console.qmp,server=on,wait=off");
        assert_eq!(Qemu::Osv.stop_socket(&pc, dir, inst), None);

        let micro = plan("microvm");
        let inst = &micro.instances(dir)[0];
        assert_eq!(Qemu::Linux.stop_socket(&micro, dir, inst), None);
        let c = command(
            &micro,
            dir,
            inst,
            Accelerator::Tcg,
            Console::File(&inst.console_log),
        );
        assert!(!args(&c).contains(&"-qmp".to_string()));

        // Too long for a unix socket address: no socket, the VM is killed instead.
        let deep = PathBuf::from(format!("/{}", "d".repeat(100)));
        let inst = &pc.instances(&deep)[0];
        assert_eq!(qmp_socket(&pc, inst), None);
        let c = command(
            &pc,
            &deep,
            inst,
            Accelerator::Tcg,
            Console::File(&inst.console_log),
        );
        assert!(!args(&c).contains(&"-qmp".to_string()));
    }

    #[test]
    fn a_plan_without_acpi_gets_microvm_without_acpi_tables() {
        let dir = Path::new("/out/x");
        let mut p = plan("microvm");
        let machine = |p: &BootPlan| {
            let inst = &p.instances(dir)[0];
            let a = args(&command(
                p,
                dir,
                inst,
                Accelerator::Tcg,
                Console::File(&inst.console_log),
            ));
            let i = a.iter().position(|a| a == "-M").expect("-M");
            a[i + 1].clone()
        };
        assert_eq!(machine(&p), "microvm");
        p.acpi_off = true;
        assert_eq!(machine(&p), "microvm,acpi=off");
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"acpi_off\":true"), "{json}");
        assert!(!serde_json::to_string(&plan("microvm"))
            .unwrap()
            .contains("acpi_off"));
    }

    #[test]
    fn qmp_socket_names() {
        for n in ["console.qmp", "console-1.qmp", "console-12.qmp"] {
            assert!(is_qmp_socket_name(n), "{n}");
        }
        for n in [
            "console.log",
            "console-.qmp",
            "console-x.qmp",
            "consolex.qmp",
            "a.qmp",
        ] {
            assert!(!is_qmp_socket_name(n), "{n}");
        }
    }

    #[test]
    fn host_tsc_is_plausible() {
        if let Some(khz) = host_tsc_khz() {
            assert!(khz % 1000 == 0 && khz >= 100_000, "{khz}");
        }
    }
}
