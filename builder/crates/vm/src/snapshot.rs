//! Snapshots: a booted, ready Linux guest saved with qemu's migration to a file, and
//! further VMs started from that file instead of booting.
//!
//! Owns: the snapshot's two files beside the image (`snapshot.state`, qemu's migration
//! stream; `snapshot.json`, what it was made from: [`Meta`]), whether a snapshot fits an
//! image ([`Meta::check_fits`]: same kernel, initramfs, memory, CPUs, machine, qemu and
//! accelerator, else refused with the reason), the save over QMP ([`save`]: `migrate` to
//! `exec:cat > FILE`, polled until done), the arguments that restore one
//! (`-incoming`), and what a restored guest is told first ([`resync`], the init's control
//! line: the wall clock stepped to the host's, the random pool fed 32 bytes from the
//! host's CSPRNG and the CRNG reseeded).
//!
//! Limits, by construction: a snapshot restores only into the same device model
//! (the plan's machine, memory and CPUs, the same qemu, the same accelerator), one VM
//! per network namespace (every restored guest has the saved address and MAC); what the
//! release drew from its own random state before the save (e.g. `rand` seeds of
//! processes already running) is the same in every restored VM.
//!
//! Must not: build images, create namespaces or decide when a guest is ready (the
//! sandbox does, with the first smoke check).

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::boot::qemu::{Accelerator, Qmp};
use crate::boot::BootPlan;
use beambake_contract::control;

/// qemu's migration stream of the saved guest, in the image's directory.
pub const STATE_FILE: &str = "snapshot.state";
/// [`Meta`] of the snapshot, in the image's directory.
pub const META_FILE: &str = "snapshot.json";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The snapshot in `path` was not made from this image or machine.
    #[error("{path}: refusing to restore: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    #[error("{path}: no snapshot (make one with `beambake snapshot`)")]
    Missing { path: PathBuf },
    /// This image or request cannot have a snapshot.
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error("{0}")]
    Qmp(String),
    /// The restored guest did not take the resync.
    #[error("resync after restore: {0}")]
    Resync(String),
}

/// What a snapshot was made from: all of it must match to restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub image: String,
    pub kernel_sha256: String,
    pub initrd_sha256: Option<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub machine: String,
    /// `tcg` or `kvm`: qemu does not migrate between them.
    pub accel: String,
    /// `qemu-system-x86_64 --version`'s first line.
    pub qemu: String,
    /// Of [`STATE_FILE`], checked before every restore.
    pub state_sha256: String,
    pub state_bytes: u64,
}

impl Meta {
    /// The meta of `plan`'s image in `dir` under `accel` (without the state's digest).
    pub fn of(plan: &BootPlan, dir: &Path, accel: Accelerator) -> Result<Meta, SnapshotError> {
        let digest = |p: PathBuf| {
            beambake_images::digest::sha256_file(&p)
                .map_err(|source| SnapshotError::Io { path: p, source })
        };
        Ok(Meta {
            image: plan.name.clone(),
            kernel_sha256: digest(dir.join(&plan.kernel))?,
            initrd_sha256: plan
                .initrd
                .as_ref()
                .map(|i| digest(dir.join(i)))
                .transpose()?,
            memory_mib: plan.memory_mib,
            cpus: plan.cpus,
            machine: format!(
                "{:?}{}",
                plan.machine,
                if plan.acpi_off { ",acpi=off" } else { "" }
            )
            .to_lowercase(),
            accel: accel.name().to_string(),
            qemu: qemu_version(),
            state_sha256: String::new(),
            state_bytes: 0,
        })
    }

    /// Reads the snapshot of the image in `dir`.
    pub fn load(dir: &Path) -> Result<Meta, SnapshotError> {
        let path = dir.join(META_FILE);
        let text = fs::read_to_string(&path).map_err(|e| missing_or_io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| SnapshotError::Mismatch {
            path,
            reason: format!("not a snapshot description: {e}"),
        })
    }

    /// Whether this snapshot (from `path`) can restore into `now`, the image and machine
    /// at hand; the first difference is the reason.
    pub fn check_fits(&self, now: &Meta, path: &Path) -> Result<(), SnapshotError> {
        let differs = |what: &str, saved: String, here: String| SnapshotError::Mismatch {
            path: path.to_path_buf(),
            reason: format!("it was saved with {what} {saved}, this image has {here}"),
        };
        let short = |s: &str| s.chars().take(12).collect::<String>();
        if self.kernel_sha256 != now.kernel_sha256 || self.initrd_sha256 != now.initrd_sha256 {
            return Err(SnapshotError::Mismatch {
                path: path.to_path_buf(),
                reason: format!(
                    "it was saved from another image (kernel {}, initramfs {}; this image: kernel {}, initramfs {})",
                    short(&self.kernel_sha256),
                    short(self.initrd_sha256.as_deref().unwrap_or("-")),
                    short(&now.kernel_sha256),
                    short(now.initrd_sha256.as_deref().unwrap_or("-")),
                ),
            });
        }
        if self.memory_mib != now.memory_mib {
            return Err(differs(
                "memory",
                format!("{} MiB", self.memory_mib),
                format!("{} MiB", now.memory_mib),
            ));
        }
        if self.cpus != now.cpus {
            return Err(differs("cpus", self.cpus.to_string(), now.cpus.to_string()));
        }
        if self.machine != now.machine {
            return Err(differs(
                "machine",
                self.machine.clone(),
                now.machine.clone(),
            ));
        }
        if self.accel != now.accel {
            return Err(differs(
                "accelerator",
                self.accel.clone(),
                now.accel.clone(),
            ));
        }
        if self.qemu != now.qemu {
            return Err(differs("qemu", self.qemu.clone(), now.qemu.clone()));
        }
        Ok(())
    }
}

fn qemu_version() -> String {
    std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Refuses, before anything starts, what cannot be saved or restored: a guest other than
/// Linux under qemu, more than one VM, no check to say when it is ready; and for a restore
/// (`restore`), a snapshot that does not fit the image in `dir` under `accel`.
pub fn preflight(
    plan: &BootPlan,
    dir: &Path,
    restore: bool,
    accel: Accelerator,
) -> Result<(), SnapshotError> {
    let refuse = |message: String| SnapshotError::Unsupported {
        path: dir.join(crate::boot::PLAN_FILE),
        message,
    };
    if crate::boot::vmm::vmm_kind(plan) != crate::boot::vmm::VmmKind::Qemu {
        return Err(refuse(format!(
            "snapshots need a Linux guest under qemu (target microvm); this image is {:?}",
            plan.target
        )));
    }
    if plan.net.guests.len() != 1 {
        return Err(refuse(
            "a snapshot holds one VM: every restored VM has its address, so each runs in a namespace of its own (restore once per VM)".into(),
        ));
    }
    if plan.checks.is_empty() {
        return Err(refuse(
            "a snapshot is saved once the first check passes: the image's recipe has no [[check]]"
                .into(),
        ));
    }
    if restore {
        check(dir, &Meta::of(plan, dir, accel)?)?;
    }
    Ok(())
}

/// The QMP socket the sandbox gives a VM it saves or restores: beside its console log,
/// where the qemu adapter's clean-up finds it (machine microvm has no other).
pub fn qmp_socket(console_log: &Path) -> PathBuf {
    console_log.with_extension("qmp")
}

/// qemu's `-qmp` argument for [`qmp_socket`].
pub fn qmp_args(socket: &Path) -> [String; 2] {
    let path = socket.display().to_string().replace(',', ",,");
    ["-qmp".into(), format!("unix:{path},server=on,wait=off")]
}

/// qemu's arguments that restore the state in `dir` instead of booting.
pub fn restore_args(dir: &Path) -> [String; 2] {
    [
        "-incoming".into(),
        format!("exec:cat {}", shell_quote(&dir.join(STATE_FILE))),
    ]
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Saves the running VM behind `qmp` as `dir`'s snapshot: the VM is stopped, its state
/// streamed to a temporary file, then the state and `meta` (with the state's digest) are
/// renamed into place; a failed save leaves no file and the previous snapshot intact.
pub fn save(
    qmp: &Path,
    dir: &Path,
    mut meta: Meta,
    timeout: Duration,
) -> Result<Meta, SnapshotError> {
    let state = dir.join(STATE_FILE);
    // A save that was killed left its stream behind: gone now.
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!(".{STATE_FILE}."))
            {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    let tmp = dir.join(format!(".{STATE_FILE}.{}", std::process::id()));
    let result = (|| {
        let qmp_err = |e: io::Error| SnapshotError::Qmp(format!("{}: {e}", qmp.display()));
        let mut q = Qmp::connect(qmp, Duration::from_secs(10)).map_err(qmp_err)?;
        // A running guest is migrated (qemu stops it when the stream is complete): the
        // state then says "running", and a restore resumes it by itself.
        let uri = format!("exec:cat > {}", shell_quote(&tmp));
        q.execute("migrate", Some(serde_json::json!({ "uri": uri })))
            .map_err(qmp_err)?;
        let start = Instant::now();
        loop {
            let r = q.execute("query-migrate", None).map_err(qmp_err)?;
            match r["return"]["status"].as_str().unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    return Err(SnapshotError::Qmp(format!(
                        "migration to {} failed: {}",
                        tmp.display(),
                        r["return"]["error-desc"]
                    )))
                }
                _ if start.elapsed() > timeout => {
                    return Err(SnapshotError::Qmp(format!(
                        "migration to {} did not finish within {} s",
                        tmp.display(),
                        timeout.as_secs()
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let io = |source| SnapshotError::Io {
            path: tmp.clone(),
            source,
        };
        meta.state_sha256 = beambake_images::digest::sha256_file(&tmp).map_err(io)?;
        meta.state_bytes = fs::metadata(&tmp).map_err(io)?.len();
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        // The state first: until the meta that names its digest is in place, a restore
        // refuses it.
        fs::rename(&tmp, &state).map_err(|source| SnapshotError::Io {
            path: state.clone(),
            source,
        })?;
        let json = serde_json::to_string_pretty(&meta).unwrap_or_default();
        beambake_images::output::write_bytes(&dir.join(META_FILE), json.as_bytes()).map_err(
            |e| SnapshotError::Io {
                path: dir.join(META_FILE),
                source: io::Error::other(e.to_string()),
            },
        )?;
        Ok(meta)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Waits, over QMP, until the restored VM behind `qmp` has loaded its state and runs
/// (resuming it when the state was saved paused); a failed load is an error.
pub fn resume(qmp: &Path, timeout: Duration) -> Result<(), SnapshotError> {
    let start = Instant::now();
    let qmp_err = |e: io::Error| SnapshotError::Qmp(format!("{}: {e}", qmp.display()));
    let mut q = loop {
        match Qmp::connect(qmp, Duration::from_secs(10)) {
            Ok(q) => break q,
            Err(_) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(qmp_err(e)),
        }
    };
    loop {
        let r = q.execute("query-status", None).map_err(qmp_err)?;
        match r["return"]["status"].as_str().unwrap_or("") {
            "running" => return Ok(()),
            "inmigrate" if start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(20))
            }
            "paused" | "postmigrate" | "prelaunch" => {
                q.execute("cont", None).map_err(qmp_err)?;
            }
            other => {
                return Err(SnapshotError::Qmp(format!(
                    "the restored VM is {other:?}, not running (the state did not load: see the console log)"
                )))
            }
        }
    }
}

/// A snapshot file that cannot be read: missing, or another I/O error.
fn missing_or_io(path: &Path, source: io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    if source.kind() == io::ErrorKind::NotFound {
        SnapshotError::Missing { path }
    } else {
        SnapshotError::Io { path, source }
    }
}

/// Checks that `dir` holds a snapshot that fits `now` and whose state is intact.
pub fn check(dir: &Path, now: &Meta) -> Result<Meta, SnapshotError> {
    let meta = Meta::load(dir)?;
    let path = dir.join(META_FILE);
    meta.check_fits(now, &path)?;
    let state = dir.join(STATE_FILE);
    let digest =
        beambake_images::digest::sha256_file(&state).map_err(|e| missing_or_io(&state, e))?;
    if digest != meta.state_sha256 {
        return Err(SnapshotError::Mismatch {
            path: state,
            reason: "its sha256 is not the one recorded when it was saved (damaged or replaced)"
                .into(),
        });
    }
    Ok(meta)
}

/// Tells a just-restored guest, over its control line `ctl`, the host's time and fresh
/// entropy ([`control::Request::Resync`]); returns how far its clock moved, in ms.
pub fn resync(ctl: &UnixStream, timeout: Duration) -> Result<i64, SnapshotError> {
    let err = |e: io::Error| SnapshotError::Resync(e.to_string());
    let mut seed = [0u8; control::SEED_BYTES];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut seed))
        .map_err(err)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    const ID: u64 = 1;
    let mut w = ctl.try_clone().map_err(err)?;
    ctl.set_read_timeout(Some(timeout)).map_err(err)?;
    writeln!(w, "{}", control::resync_line(ID, now, &seed)).map_err(err)?;
    let mut r = BufReader::new(ctl.try_clone().map_err(err)?);
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => SnapshotError::Resync(format!(
                "the guest did not answer on its control line within {} s",
                timeout.as_secs()
            )),
            _ => err(e),
        })?;
        if n == 0 {
            return Err(SnapshotError::Resync("the control line closed".into()));
        }
        let l = line.trim();
        if let Some(rest) = l.strip_prefix(&format!("{ID} ok ")) {
            return rest
                .parse()
                .map_err(|_| SnapshotError::Resync(format!("answered {l:?}")));
        }
        if l.starts_with(&format!("{ID} error")) {
            return Err(SnapshotError::Resync(format!("the guest answered {l:?}")));
        }
        // `0 ready` from a guest that had not said it before the save, or noise.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            image: "echo".into(),
            kernel_sha256: "aa".repeat(32),
            initrd_sha256: Some("bb".repeat(32)),
            memory_mib: 256,
            cpus: 1,
            machine: "microvm".into(),
            accel: "tcg".into(),
            qemu: "QEMU emulator version 7.2.19".into(),
            state_sha256: "cc".repeat(32),
            state_bytes: 1,
        }
    }

    #[test]
    fn a_snapshot_fits_only_its_own_image_and_machine() {
        let p = Path::new("/i/snapshot.json");
        let saved = meta();
        assert!(saved.check_fits(&meta(), p).is_ok());
        let reason = |now: Meta| saved.check_fits(&now, p).unwrap_err().to_string();
        let other = Meta {
            initrd_sha256: Some("dd".repeat(32)),
            ..meta()
        };
        assert!(reason(other).contains("saved from another image"));
        let bigger = Meta {
            memory_mib: 512,
            ..meta()
        };
        let r = reason(bigger);
        assert!(
            r.contains("/i/snapshot.json: refusing to restore")
                && r.contains("memory 256 MiB, this image has 512 MiB"),
            "{r}"
        );
        let kvm = Meta {
            accel: "kvm".into(),
            ..meta()
        };
        assert!(reason(kvm).contains("accelerator tcg"));
    }

    fn plan(target: &str, guests: &str, checks: &str) -> BootPlan {
        serde_json::from_str(&format!(
            r#"{{"name": "x", "target": "{target}", "kernel": "k", "cmdline": "",
                "memory_mib": 256, "cpus": 1, "machine": "microvm", "accel": "auto",
                "net": {{"mode": "tap", "guests": [{guests}], "prefix": 24,
                         "host": "10.0.2.2", "hostname": "x"}},
                "checks": [{checks}],
                "smoke": {{"ready_timeout_s": 60, "check_timeout_s": 30}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn only_one_checked_linux_guest_under_qemu_has_a_snapshot() {
        let d = Path::new("/o");
        let echo = r#"{"type": "tcp_echo", "port": 8080}"#;
        let one = "\"10.0.2.15\"";
        let refused = |p: BootPlan| {
            preflight(&p, d, false, Accelerator::Tcg)
                .unwrap_err()
                .to_string()
        };
        assert!(preflight(&plan("microvm", one, echo), d, false, Accelerator::Tcg).is_ok());
        assert!(refused(plan("uml", one, echo)).contains("need a Linux guest under qemu"));
        let two = "\"10.0.2.15\", \"10.0.2.16\"";
        assert!(refused(plan("microvm", two, echo)).contains("holds one VM"));
        assert!(refused(plan("microvm", one, "")).contains("no [[check]]"));
        let r = preflight(&plan("microvm", one, echo), d, true, Accelerator::Tcg)
            .unwrap_err()
            .to_string();
        assert!(r.contains("/o/k"), "the kernel's digest: {r}");
    }

    #[test]
    fn restore_quotes_the_state_path() {
        assert_eq!(
            restore_args(Path::new("/o/it's")),
            ["-incoming", "exec:cat '/o/it'\\''s/snapshot.state'"]
        );
    }
}
