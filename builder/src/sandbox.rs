//! Running a guest in a private sandbox: the parent (`beambake boot|smoke`) re-executes
//! itself as `beambake __sandbox REQUEST.json` in a new network and PID namespace
//! ([`crate::net::sandboxed`]); that process sets up `lo` and the tap, starts a reaper as
//! PID 1 of the new PID namespace, boots the VM and, for smoke runs, runs the checks from
//! inside the namespace and prints the report as JSON on stdout.
//!
//! Cleanup is the kernel's job, on every path: the sandbox dies with its parent
//! (`PR_SET_PDEATHSIG`), the reaper and the VM die with the sandbox, every process left
//! in the PID namespace dies with the reaper, and the namespace and its tap are freed
//! when their last process is gone. Nothing is named, so nothing can be left behind.
//!
//! Must not: build images; send traffic anywhere but into the namespace it made.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::boot::guest::{Guest, StatusFrom};
use crate::boot::qemu::{self, Accelerator, Console};
use crate::boot::uml;
use crate::boot::{BootError, BootPlan};
use crate::net;
use crate::recipe::{NetMode, Target};
use crate::smoke::{self, Report};

pub const SANDBOX_ARG: &str = "__sandbox";
pub const REAPER_ARG: &str = "__reaper";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Console on the terminal; returns when the VM ends.
    Interactive,
    /// Console to the log; run the plan's checks, then stop the VM.
    Smoke,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub dir: PathBuf,
    pub plan: BootPlan,
    pub mode: Mode,
    pub kvm: bool,
    /// Print the VM's command line.
    #[serde(default)]
    pub verbose: bool,
}

/// What the sandbox reports back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// The guest's own exit status (from the init), when it ended by itself.
    pub guest_exit: Option<i32>,
    pub report: Option<Report>,
    pub error: Option<String>,
}

/// Runs the request in a fresh sandbox (a child of this process) and returns its outcome.
pub fn run(req: &Request) -> Result<Outcome, BootError> {
    let exe = std::env::current_exe().map_err(|source| BootError::Io {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let req_path = req
        .dir
        .join(format!(".sandbox-{}.json", std::process::id()));
    let json = serde_json::to_string(req).map_err(|e| BootError::Net(e.to_string()))?;
    crate::output::write_bytes(&req_path, json.as_bytes()).map_err(|e| BootError::Io {
        path: e.path,
        source: e.source,
    })?;
    let out_path = outcome_path(&req_path);
    let _ = std::fs::remove_file(&out_path);
    let mut cmd = Command::new(exe);
    cmd.arg(SANDBOX_ARG).arg(&req_path);
    if req.mode == Mode::Smoke {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
    }
    if req.plan.net.mode == NetMode::Tap && !net::is_root() {
        return Err(BootError::Net(
            "tap networking needs root; use network.mode = \"user\" (qemu user networking, rootless)".into(),
        ));
    }
    net::sandboxed(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        BootError::Net(if e.kind() == std::io::ErrorKind::PermissionDenied {
            format!("cannot create a private network namespace ({e}): run as root, or enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)")
        } else {
            format!("starting the sandbox: {e}")
        })
    })?;
    let status = child.wait().map_err(|e| BootError::Net(e.to_string()))?;
    let _ = std::fs::remove_file(&req_path);
    let out = std::fs::read_to_string(&out_path);
    let _ = std::fs::remove_file(&out_path);
    match out {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| BootError::Net(format!("sandbox answered garbage ({e}): {text}"))),
        Err(_) => Err(BootError::Net(format!(
            "the sandbox ended ({status}) without an answer"
        ))),
    }
}

fn outcome_path(req_path: &Path) -> PathBuf {
    req_path.with_extension("outcome")
}

/// Body of `beambake __sandbox REQUEST`: writes the JSON [`Outcome`] beside the request.
pub fn main(req_path: &Path) -> i32 {
    let outcome = match load(req_path).and_then(|req| inside(&req)) {
        Ok(o) => o,
        Err(e) => Outcome {
            guest_exit: None,
            report: None,
            error: Some(e.to_string()),
        },
    };
    let json = serde_json::to_string(&outcome).unwrap_or_default();
    match crate::output::write_bytes(&outcome_path(req_path), json.as_bytes()) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("beambake sandbox: {e}");
            1
        }
    }
}

fn load(p: &Path) -> Result<Request, BootError> {
    let text = std::fs::read_to_string(p).map_err(|source| BootError::Io {
        path: p.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| BootError::Plan {
        path: p.to_path_buf(),
        message: e.to_string(),
    })
}

fn inside(req: &Request) -> Result<Outcome, BootError> {
    let neterr = |what: &str, e: std::io::Error| BootError::Net(format!("{what}: {e}"));
    // Paranoia: configure links only in a namespace that is visibly ours.
    if !net::only_loopback().map_err(|e| neterr("listing interfaces", e))? {
        return Err(BootError::Net(
            "refusing to configure links: not in a fresh network namespace".into(),
        ));
    }
    net::link_up("lo").map_err(|e| neterr("bringing lo up", e))?;
    let plan = &req.plan;
    let insts = plan.instances(&req.dir);
    let on_qemu = plan.target != Target::Uml;
    let mut taps = Vec::new();
    if plan.net.mode == NetMode::Tap {
        for inst in &insts {
            let what = |e| neterr(&format!("creating {}", inst.tap), e);
            taps.push(net::Tap::create(&inst.tap, on_qemu).map_err(what)?);
        }
        // One VM: the host's address on its tap. Several: a bridge joins their taps.
        let host_if = if taps.len() == 1 {
            taps[0].name.clone()
        } else {
            net::add_bridge("br0").map_err(|e| neterr("creating br0", e))?;
            for t in &taps {
                net::bridge_add_port("br0", &t.name)
                    .map_err(|e| neterr(&format!("adding {} to br0", t.name), e))?;
                net::link_up(&t.name).map_err(|e| neterr(&format!("bringing {} up", t.name), e))?;
            }
            "br0".to_string()
        };
        net::set_addr(&host_if, plan.net.host, plan.net.prefix)
            .map_err(|e| neterr(&format!("addressing {host_if}"), e))?;
        net::link_up(&host_if).map_err(|e| neterr(&format!("bringing {host_if} up"), e))?;
    }
    // First child: PID 1 of the new PID namespace, reaping orphans (epmd daemons, ...).
    let exe = std::env::current_exe().map_err(|e| neterr("current_exe", e))?;
    let mut reaper = Command::new(exe);
    reaper
        .arg(REAPER_ARG)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    net::dies_with_parent(&mut reaper);
    let mut reaper = reaper
        .spawn()
        .map_err(|e| neterr("starting the reaper", e))?;

    let accel = if req.kvm {
        Accelerator::Kvm
    } else {
        Accelerator::Tcg
    };
    let mut guests = Vec::new();
    for (i, inst) in insts.iter().enumerate() {
        // Interactive: the first VM's console is the terminal; the others log to files.
        let interactive = req.mode == Mode::Interactive && i == 0;
        let console = if interactive {
            Console::Terminal(&inst.console_log)
        } else {
            Console::File(&inst.console_log)
        };
        let (cmd, status_from) = match plan.target {
            Target::Uml => (
                uml::command(plan, &req.dir, inst, console)?,
                StatusFrom::ConsoleLine,
            ),
            Target::Rumprun => (
                qemu::rumprun_command(plan, &req.dir, accel, console),
                StatusFrom::DebugExit,
            ),
            _ => (
                qemu::command(plan, &req.dir, inst, accel, console),
                StatusFrom::DebugExit,
            ),
        };
        if req.verbose {
            eprintln!("beambake: {cmd:?}");
        }
        let tee = interactive && !on_qemu;
        let mut g = Guest::spawn(
            cmd,
            taps.get(i).map(|t| &t.fd),
            &inst.console_log,
            status_from,
            tee,
        )?;
        if plan.target == Target::Uml {
            g = g.with_mconsole(uml::mconsole_path(plan, &req.dir, inst));
        }
        guests.push(g);
    }
    let outcome = match req.mode {
        Mode::Interactive => {
            let g = &mut guests[0];
            g.pump_console();
            g.wait().map_err(|e| neterr("waiting for the VM", e))?;
            Outcome {
                guest_exit: g.guest_status(),
                report: None,
                error: None,
            }
        }
        Mode::Smoke => {
            let cookie = plan.cookie(&req.dir)?;
            let host: IpAddr = match plan.net.mode {
                NetMode::Tap => plan.net.host.into(),
                _ => [127, 0, 0, 1].into(),
            };
            let nodes = insts
                .iter()
                .map(|inst| smoke::NodeTarget {
                    addr: match plan.net.mode {
                        NetMode::Tap => inst.ip.into(),
                        _ => [127, 0, 0, 1].into(),
                    },
                    node: inst.node.clone(),
                })
                .collect();
            let target = smoke::Target {
                nodes,
                host,
                cookie: cookie.as_deref(),
                ready_timeout: Duration::from_secs(plan.smoke.ready_timeout_s),
                check_timeout: Duration::from_secs(plan.smoke.check_timeout_s),
            };
            let accel_name = match (plan.target, req.kvm) {
                (Target::Uml, _) => "uml",
                (_, true) => "kvm",
                (_, false) => "tcg",
            };
            let report = smoke::run(&plan.name, accel_name, &mut guests, &plan.checks, &target);
            Outcome {
                guest_exit: report.guest_exit,
                report: Some(report),
                error: None,
            }
        }
    };
    // A clean shutdown where the VM can be asked (UML: data disks synced), else a kill.
    for g in &mut guests {
        g.request_stop();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for g in &mut guests {
        g.stop_by(deadline);
    }
    let _ = reaper.kill();
    let _ = reaper.wait();
    Ok(outcome)
}

/// Body of `beambake __reaper`: PID 1 of the sandbox's PID namespace. Reaps until killed.
pub fn reaper_main() -> i32 {
    loop {
        // SAFETY: plain wait; a null status pointer is allowed.
        let r = unsafe { libc::wait(std::ptr::null_mut()) };
        if r < 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
