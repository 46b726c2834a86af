//! The accelerator of qemu guests, chosen so that it proves itself.
//!
//! On some hosts `/dev/kvm` opens but KVM does not work: qemu aborts at once (`failed to
//! set MSR`, SIGABRT), or a Linux guest hangs after the decompressor. So KVM is chosen only
//! when a probe guest demonstrably ran: qemu boots the plan's own kernel with a one-file
//! initramfs holding beambake's init in probe mode (`beambake.probe=TOKEN`); the init
//! prints a marker with the random token on the serial console and powers off through
//! isa-debug-exit with [`PROBE_STATUS`]. KVM only when the marker with the token is on the
//! console AND qemu exited with `(PROBE_STATUS << 1) | 1` within [`PROBE_BOUND`]; a
//! signal, a hang (killed at the bound), another status or no marker means TCG. The
//! verdict and its evidence are cached per [`ProbeKey`] (boot id, qemu binary, kernel
//! sha256, machine, CPU model, init) in `CACHE/accel-probe/`.
//!
//! Precedence of what was asked for: `--accel` > `BEAMBAKE_ACCEL` (auto, kvm, tcg) >
//! the recipe's `vm.accel`; only `auto` probes.
//!
//! Owns: that precedence, the probe (its initramfs, command, bound, evidence), the cache.
//! Must not: boot images or keep any process beyond the probe (a [`Guest`] of
//! [`Qemu`]: killed with its process group and reaped on every path; it dies with its
//! parent).

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beambake_contract::cmdline::GuestParams;
use beambake_contract::console::{self, PROBE_STATUS};
use beambake_contract::exit;
use serde::{Deserialize, Serialize};

use super::guest::{Guest, Wiring};
use super::qemu::{self, Accelerator, Qemu};
use beambake_recipe::{Accel, Machine};

/// Environment variable choosing the accelerator (`auto`, `kvm`, `tcg`).
pub const ACCEL_ENV: &str = "BEAMBAKE_ACCEL";
/// How long the probe guest may take, from qemu's start to its exit.
pub const PROBE_BOUND: Duration = Duration::from_secs(10);
/// Cache directory (inside the beambake cache) of probe verdicts.
pub const CACHE_SUBDIR: &str = "accel-probe";

#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("{ACCEL_ENV}={value:?}: not an accelerator; allowed values: auto, kvm, tcg")]
    BadEnv { value: String },
}

/// The accelerator chosen, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Choice {
    pub accelerator: Accelerator,
    pub reason: String,
    /// The probe that decided (fresh or cached), when one ran.
    pub probe: Option<Probe>,
}

impl Choice {
    /// `kvm` or `tcg`.
    pub fn name(&self) -> &'static str {
        self.accelerator.name()
    }
}

/// What the probe is run against.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The qemu program (see [`qemu::program`]).
    pub qemu: PathBuf,
    /// The plan's kernel.
    pub kernel: PathBuf,
    pub machine: Machine,
    /// The `-cpu` model a KVM boot would use.
    pub cpu: String,
    pub bound: Duration,
    /// beambake's init (the CLI embeds it), booted in probe mode.
    pub init: &'static [u8],
}

impl ProbeTarget {
    /// The probe of `plan` (files in `dir`): its kernel, machine and KVM CPU model (`host`
    /// unless it names one), under [`PROBE_BOUND`].
    pub fn for_plan(plan: &super::BootPlan, dir: &Path, init: &'static [u8]) -> ProbeTarget {
        ProbeTarget {
            qemu: qemu::program(),
            kernel: dir.join(&plan.kernel),
            machine: plan.machine,
            cpu: plan.cpu.clone().unwrap_or_else(|| "host".into()),
            bound: PROBE_BOUND,
            init,
        }
    }
}

/// How the probe's qemu ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProbeExit {
    /// Exited by itself with this status.
    Status { code: i32 },
    /// Died of a signal.
    Signal { signal: i32, name: String },
    /// Still running at the bound: killed.
    Hung { bound_ms: u64 },
    /// Could not be started.
    NotStarted { error: String },
}

/// The probe's evidence and verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    pub kvm: bool,
    pub reason: String,
    /// The console line with this probe's token was seen.
    pub marker_seen: bool,
    pub exit: ProbeExit,
    /// The qemu exit status that proves the guest asked for it.
    pub expected_status: i32,
    pub elapsed_ms: u64,
    /// Last lines of the guest's serial console.
    pub console_tail: Vec<String>,
    /// Last lines of qemu's stderr.
    pub stderr_tail: Vec<String>,
    /// The qemu command line.
    pub command: Vec<String>,
    /// When it ran (seconds since the epoch).
    pub probed_at: u64,
}

/// Everything that can change a probe's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeKey {
    pub boot_id: String,
    pub qemu_path: String,
    pub qemu_size: u64,
    pub qemu_mtime_ns: i64,
    pub kernel_sha256: String,
    pub machine: String,
    pub cpu: String,
    pub init_sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheEntry {
    key: ProbeKey,
    probe: Probe,
}

/// The accelerator asked for by `BEAMBAKE_ACCEL` (`None` when unset or empty).
pub fn env_accel() -> Result<Option<Accel>, AccelError> {
    parse_env(std::env::var_os(ACCEL_ENV).as_deref())
}

/// Parses a `BEAMBAKE_ACCEL` value.
pub fn parse_env(value: Option<&OsStr>) -> Result<Option<Accel>, AccelError> {
    let Some(v) = value else { return Ok(None) };
    match v.to_str().map(str::trim) {
        Some("") => Ok(None),
        Some("auto") => Ok(Some(Accel::Auto)),
        Some("kvm") => Ok(Some(Accel::Kvm)),
        Some("tcg") => Ok(Some(Accel::Tcg)),
        _ => Err(AccelError::BadEnv {
            value: v.to_string_lossy().into_owned(),
        }),
    }
}

fn accel_name(a: Accel) -> &'static str {
    match a {
        Accel::Auto => "auto",
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

/// What was asked for, by precedence (`--accel` > `BEAMBAKE_ACCEL` > recipe), and who
/// asked.
pub fn requested(cli: Option<Accel>, env: Option<Accel>, recipe: Accel) -> (Accel, String) {
    match (cli, env) {
        (Some(a), _) => (a, format!("--accel {}", accel_name(a))),
        (None, Some(a)) => (a, format!("{ACCEL_ENV}={}", accel_name(a))),
        (None, None) => (recipe, format!("vm.accel = \"{}\"", accel_name(recipe))),
    }
}

/// Chooses the accelerator: `cli` and `BEAMBAKE_ACCEL` override the recipe's `recipe`;
/// `auto` probes `target` (cached in `cache_dir`).
pub fn choose(
    cli: Option<Accel>,
    recipe: Accel,
    target: &ProbeTarget,
    cache_dir: &Path,
) -> Result<Choice, AccelError> {
    let (asked, who) = requested(cli, env_accel()?, recipe);
    Ok(match asked {
        Accel::Kvm => Choice {
            accelerator: Accelerator::Kvm,
            reason: format!("asked for by {who}"),
            probe: None,
        },
        Accel::Tcg => Choice {
            accelerator: Accelerator::Tcg,
            reason: format!("asked for by {who}"),
            probe: None,
        },
        Accel::Auto => auto(target, cache_dir),
    })
}

/// `auto`: TCG without a usable `/dev/kvm`, else the (cached) probe's verdict.
pub fn auto(target: &ProbeTarget, cache_dir: &Path) -> Choice {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return Choice {
            accelerator: Accelerator::Tcg,
            reason: format!("/dev/kvm cannot be opened ({e})"),
            probe: None,
        };
    }
    let key = match ProbeKey::of(target) {
        Ok(k) => k,
        Err(e) => {
            return Choice {
                accelerator: Accelerator::Tcg,
                reason: format!("cannot identify the probe's inputs: {e}"),
                probe: None,
            }
        }
    };
    let file = cache_dir.join(CACHE_SUBDIR).join(key.file_name());
    if let Some(probe) = read_cache(&file, &key) {
        return choice_of(probe, " (cached for this boot, qemu and kernel)");
    }
    let probe = probe(target);
    if !matches!(probe.exit, ProbeExit::NotStarted { .. }) {
        // The cache only saves time: a failed write is not an error.
        let _ = write_cache(&file, &key, &probe);
    }
    choice_of(probe, "")
}

fn choice_of(probe: Probe, note: &str) -> Choice {
    Choice {
        accelerator: if probe.kvm {
            Accelerator::Kvm
        } else {
            Accelerator::Tcg
        },
        reason: format!("KVM probe{note}: {}", probe.reason),
        probe: Some(probe),
    }
}

fn read_cache(file: &Path, key: &ProbeKey) -> Option<Probe> {
    let text = std::fs::read_to_string(file).ok()?;
    let entry: CacheEntry = serde_json::from_str(&text).ok()?;
    (entry.key == *key).then_some(entry.probe)
}

fn write_cache(file: &Path, key: &ProbeKey, probe: &Probe) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let entry = CacheEntry {
        key: key.clone(),
        probe: probe.clone(),
    };
    let json = serde_json::to_string_pretty(&entry).map_err(std::io::Error::other)?;
    beambake_images::output::write_bytes(file, json.as_bytes()).map_err(|e| e.source)?;
    Ok(())
}

impl ProbeKey {
    /// The key of `target` on this host now.
    pub fn of(target: &ProbeTarget) -> std::io::Result<ProbeKey> {
        use std::os::unix::fs::MetadataExt;
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
        let qemu_path = resolve_program(&target.qemu).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{}: not found", target.qemu.display()),
            )
        })?;
        let qemu_path = std::fs::canonicalize(&qemu_path)?;
        let meta = std::fs::metadata(&qemu_path)?;
        let kernel_sha256 = beambake_images::digest::sha256_file(&target.kernel).map_err(|e| {
            std::io::Error::new(e.kind(), format!("{}: {e}", target.kernel.display()))
        })?;
        Ok(ProbeKey {
            boot_id: boot_id.trim().to_string(),
            qemu_path: qemu_path.display().to_string(),
            qemu_size: meta.len(),
            qemu_mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            kernel_sha256,
            machine: machine_name(target.machine).into(),
            cpu: target.cpu.clone(),
            init_sha256: beambake_images::digest::sha256_bytes(target.init),
        })
    }

    /// The cache file's name: a hash of the key.
    pub fn file_name(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        let h = beambake_images::digest::sha256_bytes(json.as_bytes());
        format!("{}.json", &h[..16])
    }
}

/// `program` as a path: itself when it names a directory, else the first on `PATH`.
fn resolve_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    beambake_images::host::which(&program.to_string_lossy())
}

fn machine_name(m: Machine) -> &'static str {
    match m {
        Machine::Microvm => "microvm",
        Machine::Pc => "pc",
    }
}

/// Boots the probe guest under KVM and judges it. Never fails: any problem is evidence
/// for TCG.
pub fn probe(target: &ProbeTarget) -> Probe {
    let expected_status = exit::qemu_exit_status(PROBE_STATUS);
    let probed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut p = Probe {
        kvm: false,
        reason: String::new(),
        marker_seen: false,
        exit: ProbeExit::NotStarted {
            error: String::new(),
        },
        expected_status,
        elapsed_ms: 0,
        console_tail: vec![],
        stderr_tail: vec![],
        command: vec![],
        probed_at,
    };
    let not_started = |mut p: Probe, error: String| {
        p.reason = format!("the probe did not run: {error}");
        p.exit = ProbeExit::NotStarted { error };
        p
    };
    let work = match tempfile::Builder::new().prefix("beambake-probe-").tempdir() {
        Ok(w) => w,
        Err(e) => return not_started(p, format!("creating a temp dir: {e}")),
    };
    let initrd = work.path().join("probe.cpio");
    if let Err(e) = write_probe_initramfs(&initrd, target.init) {
        return not_started(p, format!("writing {}: {e}", initrd.display()));
    }
    let token = match random_token() {
        Ok(t) => t,
        Err(e) => return not_started(p, format!("/dev/urandom: {e}")),
    };
    let console = work.path().join("console.log");
    let stderr_path = work.path().join("stderr.log");
    let stderr = match std::fs::File::create(&stderr_path) {
        Ok(f) => f,
        Err(e) => return not_started(p, format!("{}: {e}", stderr_path.display())),
    };
    let params = GuestParams {
        probe: Some(token.clone()),
        ..GuestParams::default()
    };
    let mut c = Command::new(&target.qemu);
    c.args(["-M", machine_name(target.machine)])
        .args(["-accel", "kvm", "-cpu", &target.cpu])
        .args(["-m", "256", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&target.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            &format!("{} {}", qemu::FAST_CMDLINE, params.to_cmdline()),
        ])
        .arg("-chardev")
        .arg(format!("file,id=con,path={}", console.display()))
        .args(["-serial", "chardev:con"])
        .args(["-device", exit::QEMU_DEVICE])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    p.command = std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let start = Instant::now();
    // Its own process group, so a hang is killed with anything it started; killed and
    // reaped on every path (the guest's drop), dies with its parent.
    let wiring = Wiring {
        own_group: true,
        ..Wiring::default()
    };
    let mut guest = match Guest::spawn(Arc::new(Qemu::Linux), c, &console, wiring) {
        Ok(g) => g,
        Err(e) => return not_started(p, e.to_string()),
    };
    let hung = guest.wait_until(start + target.bound).is_none();
    p.elapsed_ms = start.elapsed().as_millis() as u64;
    guest.kill();
    p.exit = match guest.exited() {
        _ if hung => ProbeExit::Hung {
            bound_ms: target.bound.as_millis() as u64,
        },
        Some(s) => {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(code), _) => ProbeExit::Status { code },
                (None, Some(sig)) => ProbeExit::Signal {
                    signal: sig,
                    name: signal_name(sig),
                },
                (None, None) => ProbeExit::NotStarted {
                    error: format!("unknown wait status {s}"),
                },
            }
        }
        None => ProbeExit::NotStarted {
            error: "waiting for qemu failed".into(),
        },
    };
    let console_text = read_lossy(&console);
    let marker = console::probe_marker_line(&token);
    p.marker_seen = console_text.lines().any(|l| l.contains(&marker));
    p.console_tail = tail(&console_text, 12);
    p.stderr_tail = tail(&read_lossy(&stderr_path), 6);
    p.kvm =
        p.marker_seen && matches!(p.exit, ProbeExit::Status { code } if code == expected_status);
    p.reason = judge(&p, target);
    p
}

/// The reason for the verdict, from the evidence.
fn judge(p: &Probe, target: &ProbeTarget) -> String {
    let secs = p.elapsed_ms as f64 / 1000.0;
    let expected = format!(
        "expected {} (guest status {PROBE_STATUS})",
        p.expected_status
    );
    let stderr = p
        .stderr_tail
        .last()
        .map(|l| format!("; qemu said: {l}"))
        .unwrap_or_default();
    let marker = if p.marker_seen {
        "the guest's marker was on the console"
    } else {
        "the guest's marker never appeared on the console"
    };
    match &p.exit {
        ProbeExit::Status { code } if p.kvm => format!(
            "the probe guest printed its marker and qemu exited with status {code} \
             (guest status {PROBE_STATUS}) after {secs:.2}s: KVM works"
        ),
        ProbeExit::Status { code } if *code == p.expected_status => {
            format!("qemu exited with status {code} after {secs:.2}s but {marker}: using TCG")
        }
        ProbeExit::Status { code } => format!(
            "qemu exited with status {code} after {secs:.2}s, {expected}; {marker}{stderr}: using TCG"
        ),
        ProbeExit::Signal { signal, name } => format!(
            "qemu was killed by signal {signal} ({name}) after {secs:.2}s; {marker}{stderr}: using TCG"
        ),
        ProbeExit::Hung { .. } => format!(
            "qemu did not exit within the {}s bound (killed); {marker}{stderr}: using TCG",
            target.bound.as_secs_f64()
        ),
        ProbeExit::NotStarted { error } => format!("the probe did not run: {error}: using TCG"),
    }
}

fn read_lossy(p: &Path) -> String {
    let mut b = Vec::new();
    match std::fs::File::open(p) {
        Ok(mut f) => {
            let _ = f.read_to_end(&mut b);
        }
        Err(_) => return String::new(),
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// The last `n` non-blank lines of `text`, each at most 240 characters.
fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.chars().take(240).collect())
        .collect()
}

/// The probe's initramfs: beambake's init at `/init`, nothing else.
fn write_probe_initramfs(path: &Path, init: &[u8]) -> std::io::Result<()> {
    let mut tree = beambake_images::rootfs::Tree::new(
        beambake_images::rootfs::Tree::epoch_from_env().unwrap_or(0),
    );
    tree.add_bytes("/init", init.to_vec(), 0o755, "beambake init")
        .map_err(std::io::Error::other)?;
    let f = std::fs::File::create(path)?;
    let w = beambake_images::image::cpio::write(&tree, std::io::BufWriter::new(f))
        .map_err(std::io::Error::other)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// 32 hex digits from the kernel's CSPRNG.
fn random_token() -> std::io::Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(beambake_images::digest::hex(b))
}

/// `SIGABRT`-style name of a signal.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values() {
        assert_eq!(parse_env(None).unwrap(), None);
        assert_eq!(parse_env(Some(OsStr::new(""))).unwrap(), None);
        assert_eq!(
            parse_env(Some(OsStr::new("kvm"))).unwrap(),
            Some(Accel::Kvm)
        );
        assert_eq!(
            parse_env(Some(OsStr::new("tcg"))).unwrap(),
            Some(Accel::Tcg)
        );
        assert_eq!(
            parse_env(Some(OsStr::new("auto"))).unwrap(),
            Some(Accel::Auto)
        );
        for bad in ["KVM!", "fast", "kvm,tcg"] {
            let e = parse_env(Some(OsStr::new(bad))).unwrap_err().to_string();
            assert!(e.contains("BEAMBAKE_ACCEL"), "{e}");
            assert!(e.contains(bad), "{e}");
            assert!(e.contains("auto, kvm, tcg"), "{e}");
        }
    }

    #[test]
    fn precedence_cli_env_recipe() {
        let r = |c, e, rec| requested(c, e, rec);
        assert_eq!(
            r(Some(Accel::Tcg), Some(Accel::Kvm), Accel::Kvm).0,
            Accel::Tcg
        );
        assert_eq!(r(None, Some(Accel::Kvm), Accel::Tcg).0, Accel::Kvm);
        let (a, who) = r(None, None, Accel::Tcg);
        assert_eq!(a, Accel::Tcg);
        assert_eq!(who, "vm.accel = \"tcg\"");
        assert_eq!(
            r(None, Some(Accel::Kvm), Accel::Tcg).1,
            "BEAMBAKE_ACCEL=kvm"
        );
        assert_eq!(r(Some(Accel::Auto), None, Accel::Tcg).1, "--accel auto");
    }

    #[test]
    fn tails_are_bounded() {
        let t = tail("a\n\nb\r\nc\n", 2);
        assert_eq!(t, vec!["b", "c"]);
        assert_eq!(tail(&"x".repeat(1000), 1)[0].len(), 240);
        assert!(tail("", 3).is_empty());
    }

    #[test]
    fn key_names_its_file_by_hash() {
        let k = ProbeKey {
            boot_id: "b".into(),
            qemu_path: "/q".into(),
            qemu_size: 1,
            qemu_mtime_ns: 2,
            kernel_sha256: "k".into(),
            machine: "microvm".into(),
            cpu: "host".into(),
            init_sha256: "i".into(),
        };
        let mut other = k.clone();
        other.cpu = "max".into();
        assert_ne!(k.file_name(), other.file_name());
        assert_eq!(k.file_name().len(), 21);
    }
}
