//! The boot trace: which modules a release has loaded once its boot script has run.
//!
//! Owns: one run of the release on the host, as the guest would start it (the launch
//! spec from `assemble::launch_spec`, in interactive mode so that only what is used gets
//! loaded), up to the end of its boot script, when every application of the release has
//! started; the loaded modules are then written by an `-eval` and the node halts. The run
//! happens in a network namespace of its own holding only a loopback (its epmd there too
//! when it is distributed), with the release's own ERTS, from a directory of links laid out
//! as the guest's release root.
//!
//! The set includes the few modules the `-eval` itself needs (`erl_scan`, ...). It is as
//! stable as the release's start: modules that a process started at boot loads later, on a
//! timer or a first request, are not in it and load on demand in the guest.
//!
//! Must not: write images or start guests; it needs an ERTS that runs on the host (not a
//! cross-built one).

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use beambake_release::assemble::{self, Options};
use beambake_release::launch::LaunchSpecExt;
use beambake_release::release::Release;
use beambake_vm::net;

use crate::pipeline::{Error, Progress};

/// How long the release may take to run its boot script on the host.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The file the `-eval` writes, relative to the release root (the node's cwd).
const OUT: &str = "beambake.trace";

/// Runs `rel` once on the host with `opts` and returns the modules loaded when its boot
/// script has finished (preloaded ones included).
pub fn loaded_modules(
    rel: &Release,
    opts: &Options,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<BTreeSet<String>, Error> {
    progress.step("tracing the modules the release loads at boot (one run on the host)");
    let fail = |message: String| Error::Trace {
        release: rel.root.clone(),
        message,
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let root = tempfile::Builder::new()
        .prefix("beambake-trace")
        .tempdir()
        .map_err(io(&std::env::temp_dir()))?;
    lay_out(rel, root.path())?;
    let mut opts = opts.clone();
    // A run of its own: a throwaway cookie on the command line, not the guest's file.
    opts.distribution.cookie_file = None;
    opts.code_loading = Some("interactive".into());
    opts.shell = false;
    opts.preload = None;
    let root_s = root.path().to_string_lossy().into_owned();
    let (spec, _) = assemble::launch_spec(rel, &root_s, &opts)?;
    let eval =
        format!("file:write_file(\"{OUT}\", term_to_binary(erlang:loaded())), erlang:halt(0)");
    let spec = spec.with_args(&["-eval", &eval]);
    let log = root.path().join("trace.log");

    // The node's epmd, when it has one: it holds the namespace the node then joins.
    let mut epmd_proc = None;
    let beam = match spec.services.iter().find(|s| s.name == "epmd") {
        Some(service) => {
            let epmd = &service.argv[0];
            let mut c = Command::new(epmd);
            c.args(&service.argv[1..]).env_clear();
            let e = net::private_loopback(&mut c)
                .and_then(|c| spawn(c, &log))
                .map_err(|e| fail(format!("{epmd}: {e}")))?;
            let pid = e.id();
            epmd_proc = Some(Killed(e));
            wait_for_epmd(epmd, pid, timeout).map_err(fail)?;
            let mut c = spec.command();
            spawn(net::join_netns_of(&mut c, pid).map_err(io(&log))?, &log)
        }
        None => {
            let mut c = spec.command();
            spawn(net::private_loopback(&mut c).map_err(io(&log))?, &log)
        }
    }
    .map_err(|e| fail(format!("{}: {e}", spec.argv[0])))?;
    let mut beam = Killed(beam);
    let status = wait(&mut beam.0, timeout).map_err(io(&log))?;
    drop(epmd_proc);
    let text = || tail(&log);
    let Some(status) = status else {
        return Err(fail(format!(
            "the release did not finish its boot script within {} s; its output:\n{}",
            timeout.as_secs(),
            text()
        )));
    };
    let out = root.path().join(OUT);
    let bytes = match fs::read(&out) {
        Ok(b) => b,
        Err(_) => {
            return Err(fail(format!(
                "the release stopped ({status}) before its boot script finished; its output:\n{}",
                text()
            )))
        }
    };
    let modules =
        decode(&bytes).ok_or_else(|| fail(format!("{}: not a module list", out.display())))?;
    progress.detail(&format!("trace: {} modules loaded at boot", modules.len()));
    Ok(modules)
}

/// The guest's release root as links: `erts-VSN`, `lib/APP-VSN` and `releases` of `rel`.
fn lay_out(rel: &Release, root: &Path) -> Result<(), Error> {
    // Absolute targets: the release may have been named by a relative path.
    let link = |to: &Path, at: PathBuf| {
        let to = crate::absolute(to);
        std::os::unix::fs::symlink(to, &at).map_err(|source| Error::Io { path: at, source })
    };
    link(&rel.erts.dir, root.join(format!("erts-{}", rel.erts.vsn)))?;
    let lib = root.join("lib");
    fs::create_dir(&lib).map_err(|source| Error::Io {
        path: lib.clone(),
        source,
    })?;
    for app in &rel.apps {
        link(&app.dir, lib.join(format!("{}-{}", app.name, app.vsn)))?;
    }
    link(&rel.root.join("releases"), root.join("releases"))?;
    for d in ["log", "tmp"] {
        let p = root.join(d);
        fs::create_dir(&p).map_err(|source| Error::Io { path: p, source })?;
    }
    Ok(())
}

fn spawn(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
    let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
}

/// `epmd -names` in the namespace of process `ns_of` until it answers (the node registers
/// at start).
fn wait_for_epmd(epmd: &str, ns_of: u32, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let mut c = Command::new(epmd);
        c.arg("-names")
            .env_clear()
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let ok = net::join_netns_of(&mut c, ns_of)
            .and_then(|c| c.status())
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "{epmd} did not start within {} s",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The child's exit status, or `None` when `timeout` passed first.
fn wait(child: &mut Child, timeout: Duration) -> std::io::Result<Option<std::process::ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if start.elapsed() > timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process killed and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last 40 lines of the run's output.
fn tail(log: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(log) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The atoms of `term_to_binary([atom()])`.
fn decode(bytes: &[u8]) -> Option<BTreeSet<String>> {
    match eetf::Term::decode(bytes).ok()? {
        eetf::Term::List(l) => l
            .elements
            .into_iter()
            .map(|t| match t {
                eetf::Term::Atom(a) => Some(a.name),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_module_list_and_refuses_anything_else() {
        let list = eetf::Term::List(eetf::List::from(vec![
            eetf::Term::Atom(eetf::Atom::from("lists")),
            eetf::Term::Atom(eetf::Atom::from("echo_app")),
        ]));
        let mut b = Vec::new();
        list.encode(&mut b).unwrap();
        let got = decode(&b).unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), ["echo_app", "lists"]);
        assert!(decode(b"junk").is_none());
        let mut b = Vec::new();
        eetf::Term::Atom(eetf::Atom::from("x"))
            .encode(&mut b)
            .unwrap();
        assert!(decode(&b).is_none());
    }
}
