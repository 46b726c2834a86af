//! `beambake doctor`: what this host can do for beambake, and why — each finding a verdict
//! with its evidence: the KVM verdict with the probe's evidence ([`beambake_vm::boot::accel`]),
//! qemu's version, a tap in a private network namespace (root), user namespaces (rootless
//! networking), whether User Mode Linux can run here (the host's XSAVE area against UML
//! 6.1's fixed buffer, and beambake's own UML kernel in the cache), the rebar3, erl and
//! elixir versions, and the cache's location and size. As text or JSON.
//!
//! Owns: the findings and their two renderings.
//! Must not: print, change the host (the namespaces and tap it tries live in a child that
//! exits at once; the only writes are the probe's verdict and, when absent, the microvm
//! kernel fetched into the cache), or fail: a check that cannot run is a finding.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use beambake_recipe::Machine;
use beambake_vm::boot::accel::{self, Probe, ProbeTarget};
use beambake_vm::boot::qemu::{self, Accelerator};
use beambake_vm::net::{self, NsTrial};

/// The size of the XSAVE buffer User Mode Linux 6.1 is built with (x86_64).
pub const UML_61_XSAVE_BYTES: u32 = 2696;
/// The largest XSAVE area beambake's patched UML kernel takes (its buffer is 16 KiB).
pub const BEAMBAKE_UML_XSAVE_BYTES: u32 = 16384;

/// The JSON keys of a [`Report`], in text order.
pub const FINDINGS: &[&str] = &[
    "kvm",
    "qemu",
    "tap_namespaces",
    "user_namespaces",
    "uml",
    "rebar3",
    "erl",
    "elixir",
    "cache",
];

/// A verdict: `ok` (beambake can use it), one line saying what, and the evidence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finding {
    pub ok: bool,
    pub verdict: String,
    pub evidence: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kvm {
    #[serde(flatten)]
    pub finding: Finding,
    /// What `auto` resolves to for the probed kernel.
    pub accelerator: Accelerator,
    /// The kernel the probe booted.
    pub kernel: Option<PathBuf>,
    /// `BEAMBAKE_ACCEL` as set (it overrides the probe for boots).
    pub accel_env: Option<String>,
    pub probe: Option<Probe>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tool {
    #[serde(flatten)]
    pub finding: Finding,
    pub path: Option<PathBuf>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Uml {
    #[serde(flatten)]
    pub finding: Finding,
    /// CPUID 0xD/0 EBX: the XSAVE area of the features this host enables.
    pub xsave_bytes: Option<u32>,
    /// CPUID 0xD/0 ECX: the XSAVE area of every feature the CPU supports.
    pub xsave_max_bytes: Option<u32>,
    pub uml_61_xsave_bytes: u32,
    /// Whether Debian's `linux.uml` 6.1 could run userspace here.
    pub debian_linux_uml_runs: Option<bool>,
    /// Where beambake keeps its UML kernel, and whether it is built.
    pub beambake_kernel: Option<PathBuf>,
    pub beambake_kernel_built: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cache {
    #[serde(flatten)]
    pub finding: Finding,
    pub dir: PathBuf,
    pub bytes: u64,
    pub files: u64,
}

/// Everything `beambake doctor` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub kvm: Kvm,
    pub qemu: Tool,
    pub tap_namespaces: Finding,
    pub user_namespaces: Finding,
    pub uml: Uml,
    pub rebar3: Tool,
    pub erl: Tool,
    pub elixir: Tool,
    pub cache: Cache,
}

pub struct Options {
    /// The kernel to probe KVM with; default: the microvm recipe's Debian cloud kernel
    /// (fetched into the cache when absent).
    pub kernel: Option<PathBuf>,
    pub cache_dir: PathBuf,
}

/// Runs every check. `progress` is told what runs (the probe and fetches take seconds).
pub fn run(opts: &Options, progress: &dyn Fn(&str)) -> Report {
    progress("qemu");
    let qemu = qemu_finding();
    progress("KVM probe");
    let kvm = kvm_finding(opts, progress);
    progress("namespaces");
    let tap_namespaces = tap_finding();
    let user_namespaces = userns_finding();
    progress("User Mode Linux");
    let uml = uml_finding(&opts.cache_dir);
    progress("rebar3, erl, elixir");
    let rebar3 = tool(
        "rebar3",
        &["version"],
        "rebar",
        "rebar3 (apt-get install rebar3)",
    );
    let erl = tool(
        "erl",
        &[
            "-noshell",
            "-eval",
            "io:format(\"Erlang/OTP ~s, ERTS ~s~n\", [erlang:system_info(otp_release), \
             erlang:system_info(version)]), halt().",
        ],
        "Erlang/OTP",
        "erl (apt-get install erlang-nox erlang-dev)",
    );
    let elixir = tool(
        "elixir",
        &["--version"],
        "Elixir",
        "elixir (apt-get install elixir; only for mix releases)",
    );
    progress("cache");
    let cache = cache_finding(&opts.cache_dir);
    Report {
        kvm,
        qemu,
        tap_namespaces,
        user_namespaces,
        uml,
        rebar3,
        erl,
        elixir,
        cache,
    }
}

fn finding(ok: bool, verdict: impl Into<String>, evidence: Vec<String>) -> Finding {
    Finding {
        ok,
        verdict: verdict.into(),
        evidence,
    }
}

fn kvm_finding(opts: &Options, progress: &dyn Fn(&str)) -> Kvm {
    let accel_env = std::env::var(accel::ACCEL_ENV).ok();
    let mut evidence = Vec::new();
    match accel::env_accel() {
        Ok(Some(a)) => evidence.push(format!(
            "{}={} overrides this verdict for boots ({a:?})",
            accel::ACCEL_ENV,
            accel_env.as_deref().unwrap_or_default()
        )),
        Ok(None) => {}
        Err(e) => evidence.push(format!("boots will refuse to start: {e}")),
    }
    let kernel = match &opts.kernel {
        Some(k) => Ok(k.clone()),
        None => {
            progress("fetching the microvm kernel to probe with");
            default_kernel(&opts.cache_dir)
        }
    };
    let kernel = match kernel {
        Ok(k) => k,
        Err(e) => {
            evidence.push(format!("no kernel to probe with: {e}"));
            return Kvm {
                finding: finding(false, "unknown: no kernel to probe with; TCG", evidence),
                accelerator: Accelerator::Tcg,
                kernel: None,
                accel_env,
                probe: None,
            };
        }
    };
    let target = ProbeTarget {
        qemu: qemu::program(),
        kernel: kernel.clone(),
        machine: Machine::Microvm,
        cpu: "host".into(),
        bound: accel::PROBE_BOUND,
        init: crate::INIT,
    };
    let choice = accel::auto(&target, &opts.cache_dir);
    evidence.push(format!("kernel: {}", kernel.display()));
    if let Some(p) = &choice.probe {
        evidence.push(format!("exit: {}", exit_text(p)));
        evidence.push(format!(
            "marker on the console: {}",
            if p.marker_seen { "yes" } else { "no" }
        ));
        evidence.extend(p.stderr_tail.iter().map(|l| format!("qemu stderr: {l}")));
        evidence.extend(p.console_tail.iter().map(|l| format!("console: {l}")));
    }
    let kvm = choice.accelerator == Accelerator::Kvm;
    Kvm {
        finding: finding(
            kvm,
            format!("{}: {}", choice.name(), choice.reason),
            evidence,
        ),
        accelerator: choice.accelerator,
        kernel: Some(kernel),
        accel_env,
        probe: choice.probe,
    }
}

fn exit_text(p: &Probe) -> String {
    use accel::ProbeExit;
    let t = match &p.exit {
        ProbeExit::Status { code } => format!("status {code}"),
        ProbeExit::Signal { signal, name } => format!("signal {signal} ({name})"),
        ProbeExit::Hung { bound_ms } => format!("killed at the {bound_ms} ms bound"),
        ProbeExit::NotStarted { error } => format!("not started: {error}"),
    };
    format!(
        "{t} after {} ms (KVM needs status {} and the marker)",
        p.elapsed_ms, p.expected_status
    )
}

/// Why a finding's evidence could not be had (the finding says so; doctor never fails).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("images/kernel-debian-cloud.toml (compiled in): {0}")]
    Pin(#[source] toml::de::Error),
    #[error(transparent)]
    Kernel(Box<beambake_kernel::kernel::KernelError>),
    #[error("temp file: {0}")]
    TempFile(#[source] io::Error),
    #[error("{program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{program} {args}: no answer within {}s (killed)", .bound.as_secs())]
    Hung {
        program: PathBuf,
        args: String,
        bound: Duration,
    },
    /// The program failed; `last` is the last line of its output.
    #[error("{program} {args}: {status}: {last}")]
    Failed {
        program: PathBuf,
        args: String,
        status: ExitStatus,
        last: String,
    },
}

/// The microvm recipe's default kernel, from the cache (fetched when absent).
fn default_kernel(cache_dir: &Path) -> Result<PathBuf, ProbeError> {
    let pin: beambake_kernel::kernel::Pin =
        toml::from_str(beambake_target_microvm::DEFAULT_PIN).map_err(ProbeError::Pin)?;
    beambake_kernel::kernel::fetch_debian(&pin, cache_dir)
        .map(|k| k.image)
        .map_err(|e| ProbeError::Kernel(Box::new(e)))
}

fn qemu_finding() -> Tool {
    let program = qemu::program();
    let name = program.to_string_lossy().into_owned();
    let mut t = tool(
        &name,
        &["--version"],
        "version",
        "qemu-system-x86_64 (apt-get install qemu-system-x86)",
    );
    if std::env::var_os(qemu::QEMU_ENV).is_some() {
        t.finding.evidence.push(format!("from {}", qemu::QEMU_ENV));
    }
    t
}

fn tap_finding() -> Finding {
    if !net::is_root() {
        return finding(
            false,
            "not root: tap networking (network.mode = \"tap\") needs root; \
             use network.mode = \"user\"",
            vec![],
        );
    }
    match net::try_namespaces(NsTrial::TapInNetns) {
        Ok(()) => finding(
            true,
            "a tap was created in a private network namespace held by a child",
            vec!["unshare(CLONE_NEWNET) + TUNSETIFF on /dev/net/tun: ok".into()],
        ),
        Err(e) => finding(
            false,
            format!("cannot make a tap in a private namespace: {e}"),
            vec![],
        ),
    }
}

fn userns_finding() -> Finding {
    let mut evidence = Vec::new();
    for f in [
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ] {
        if let Ok(v) = std::fs::read_to_string(f) {
            evidence.push(format!("{f} = {}", v.trim()));
        }
    }
    if net::is_root() {
        evidence.push(
            "tried as root: unprivileged users may still be refused by the sysctls above".into(),
        );
    }
    match net::try_namespaces(NsTrial::UserNetns) {
        Ok(()) => finding(
            true,
            "a user + network namespace was created in a child (rootless user networking works)",
            evidence,
        ),
        Err(e) => finding(
            false,
            format!(
                "cannot create a user namespace: {e} (rootless runs need \
                 kernel.unprivileged_userns_clone=1)"
            ),
            evidence,
        ),
    }
}

/// CPUID leaf 0xD, sub-leaf 0: (EBX, ECX) = XSAVE size for the enabled features, and for
/// all supported features. `None` without XSAVE (or off x86_64).
pub fn xsave_sizes() -> Option<(u32, u32)> {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__cpuid, __cpuid_count};
        // Leaf 0 gives the highest leaf (cpuid exists on every x86_64 CPU).
        let max = __cpuid(0).eax;
        if max < 0xD {
            return None;
        }
        let r = __cpuid_count(0xD, 0);
        (r.ebx != 0).then_some((r.ebx, r.ecx))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

fn uml_finding(cache_dir: &Path) -> Uml {
    let sizes = xsave_sizes();
    let image = beambake_kernel::uml_kernel::SPEC.image_path(cache_dir).ok();
    let built = image.as_ref().is_some_and(|p| p.is_file());
    let mut evidence = Vec::new();
    let debian_runs = sizes.map(|(ebx, _)| ebx <= UML_61_XSAVE_BYTES);
    match sizes {
        Some((ebx, ecx)) => evidence.push(format!(
            "CPUID 0xD/0: XSAVE area {ebx} bytes for the enabled features (EBX), {ecx} for all (ECX); \
             UML 6.1's buffer is {UML_61_XSAVE_BYTES} bytes"
        )),
        None => evidence.push("no XSAVE (CPUID leaf 0xD) on this CPU".into()),
    }
    evidence.push(match debian_runs {
        Some(true) => "Debian's linux.uml 6.1 would run userspace here".into(),
        Some(false) => "Debian's linux.uml 6.1 would not run userspace here \
                        (`ptrace set fp regs failed`): beambake builds its own UML kernel"
            .into(),
        None => "Debian's linux.uml 6.1: unknown".into(),
    });
    match &image {
        Some(p) if built => evidence.push(format!("beambake's UML kernel: built, {}", p.display())),
        Some(p) => evidence.push(format!(
            "beambake's UML kernel: not built yet ({}); the first uml build compiles it \
             (about 2.5 minutes on 2 cores)",
            p.display()
        )),
        None => evidence.push("beambake's UML kernel: its pin cannot be read".into()),
    }
    let fits = sizes.is_none_or(|(ebx, _)| ebx <= BEAMBAKE_UML_XSAVE_BYTES);
    let verdict = match (fits, built) {
        (true, true) => "UML guests can run: beambake's UML kernel is built".to_string(),
        (true, false) => "UML guests can run once beambake's UML kernel is built".to_string(),
        (false, _) => format!(
            "the host's XSAVE area does not fit beambake's UML kernel ({BEAMBAKE_UML_XSAVE_BYTES} bytes)"
        ),
    };
    Uml {
        finding: finding(fits, verdict, evidence),
        xsave_bytes: sizes.map(|s| s.0),
        xsave_max_bytes: sizes.map(|s| s.1),
        uml_61_xsave_bytes: UML_61_XSAVE_BYTES,
        debian_linux_uml_runs: debian_runs,
        beambake_kernel: image,
        beambake_kernel_built: built,
    }
}

/// Runs `program args` (bounded) and reports its version: the first line containing
/// `want`, else the first line with a digit.
fn tool(program: &str, args: &[&str], want: &str, install: &str) -> Tool {
    let path = if program.contains('/') {
        Some(PathBuf::from(program)).filter(|p| p.is_file())
    } else {
        beambake_images::host::which(program)
    };
    let Some(path) = path else {
        return Tool {
            finding: finding(false, format!("not found: install {install}"), vec![]),
            path: None,
            version: None,
        };
    };
    match run_bounded(&path, args, Duration::from_secs(20)) {
        Ok(out) => {
            let lines = || out.lines().map(str::trim);
            let version = lines()
                .find(|l| l.contains(want))
                .or_else(|| lines().find(|l| l.chars().any(|c| c.is_ascii_digit())))
                .map(str::to_string);
            Tool {
                finding: finding(
                    version.is_some(),
                    version
                        .clone()
                        .unwrap_or_else(|| "no version in its output".into()),
                    vec![format!("{} {}", path.display(), args.join(" "))],
                ),
                path: Some(path),
                version,
            }
        }
        Err(e) => Tool {
            finding: finding(false, e.to_string(), vec![]),
            path: Some(path),
            version: None,
        },
    }
}

/// stdout + stderr of `program args`, killed (with its process group) and reaped at
/// `bound`.
fn run_bounded(program: &Path, args: &[&str], bound: Duration) -> Result<String, ProbeError> {
    use std::os::unix::process::CommandExt;
    let out = tempfile::tempfile().map_err(ProbeError::TempFile)?;
    let err = out.try_clone().map_err(ProbeError::TempFile)?;
    let mut reader = out.try_clone().map_err(ProbeError::TempFile)?;
    let mut c = Command::new(program);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    net::dies_with_parent(&mut c);
    let mut child = c.spawn().map_err(|source| ProbeError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < bound => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    // SAFETY: kill(2) on the child's own process group; ESRCH when it is gone is fine.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = child.wait();
    let Some(status) = status else {
        return Err(ProbeError::Hung {
            program: program.to_path_buf(),
            args: args.join(" "),
            bound,
        });
    };
    use std::io::{Read, Seek};
    let mut text = String::new();
    let _ = reader.seek(std::io::SeekFrom::Start(0));
    let mut bytes = Vec::new();
    let _ = reader.read_to_end(&mut bytes);
    text.push_str(&String::from_utf8_lossy(&bytes));
    if status.success() {
        Ok(text)
    } else {
        Err(ProbeError::Failed {
            program: program.to_path_buf(),
            args: args.join(" "),
            status,
            last: text.lines().last().unwrap_or("").trim().to_string(),
        })
    }
}

fn cache_finding(dir: &Path) -> Cache {
    let (mut bytes, mut files, mut unreadable) = (0u64, 0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    let exists = dir.is_dir();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            unreadable += 1;
            continue;
        };
        for e in entries.flatten() {
            // Not followed: a link counts as itself.
            match std::fs::symlink_metadata(e.path()) {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    files += 1;
                    bytes += m.len();
                }
                Err(_) => unreadable += 1,
            }
        }
    }
    let mut evidence = vec!["XDG_CACHE_HOME/beambake, else HOME/.cache/beambake".to_string()];
    if unreadable > 0 {
        evidence.push(format!("{unreadable} entries could not be read"));
    }
    let verdict = if exists {
        format!("{}: {} in {files} files", dir.display(), human(bytes))
    } else {
        format!("{}: empty (created on first use)", dir.display())
    };
    Cache {
        finding: finding(true, verdict, evidence),
        dir: dir.to_path_buf(),
        bytes,
        files,
    }
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

impl Report {
    /// (text label, finding) in [`FINDINGS`] order.
    pub fn findings(&self) -> Vec<(&'static str, &Finding)> {
        vec![
            ("kvm", &self.kvm.finding),
            ("qemu", &self.qemu.finding),
            ("tap + namespaces", &self.tap_namespaces),
            ("user namespaces", &self.user_namespaces),
            ("uml", &self.uml.finding),
            ("rebar3", &self.rebar3.finding),
            ("erl", &self.erl.finding),
            ("elixir", &self.elixir.finding),
            ("cache", &self.cache.finding),
        ]
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (label, x) in self.findings() {
            writeln!(
                f,
                "{label:<17} {:<3} {}",
                if x.ok { "ok" } else { "no" },
                x.verdict
            )?;
            for e in &x.evidence {
                writeln!(f, "{:<21}  {e}", "")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsave_sizes_are_plausible() {
        if let Some((ebx, ecx)) = xsave_sizes() {
            // The legacy area + header is 576 bytes; ECX covers at least what EBX does.
            assert!(ebx >= 576 && ecx >= ebx, "{ebx} {ecx}");
        }
    }

    #[test]
    fn a_cache_dir_is_measured_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/a"), [0u8; 1000]).unwrap();
        std::fs::write(d.path().join("b"), [0u8; 24]).unwrap();
        std::os::unix::fs::symlink("/usr", d.path().join("link")).unwrap();
        let c = cache_finding(d.path());
        assert_eq!(c.files, 3);
        assert!(c.bytes >= 1024 && c.bytes < 1100, "{}", c.bytes);
        assert!(
            c.finding.verdict.contains("in 3 files"),
            "{}",
            c.finding.verdict
        );
        let missing = cache_finding(&d.path().join("nope"));
        assert!(missing.finding.verdict.contains("empty"));
    }

    #[test]
    fn a_tool_that_hangs_is_bounded() {
        let start = Instant::now();
        let e = run_bounded(Path::new("sleep"), &["1000"], Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no answer within"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let t = tool("no-such-tool-beambake", &[], "x", "it");
        assert!(!t.finding.ok && t.finding.verdict.contains("not found"));
    }
}
