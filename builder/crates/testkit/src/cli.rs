//! A command-line binary under test (the `beambake` CLI: `Cli::new(env!("CARGO_BIN_EXE_beambake"))`
//! in an integration test), every run of it guarded ([`crate::process`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::process::{output, Guarded};

/// A binary to run.
#[derive(Debug, Clone)]
pub struct Cli {
    bin: PathBuf,
}

impl Cli {
    pub fn new(bin: impl Into<PathBuf>) -> Cli {
        Cli { bin: bin.into() }
    }

    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `BIN ARGS` with no stdin, to be given more (env, cwd, stdio) and run with
    /// [`crate::output`] or [`Guarded::start`].
    pub fn command<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args).stdin(Stdio::null());
        c
    }

    /// Runs `BIN ARGS` in the current directory to its end.
    pub fn run<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Output {
        output(&mut self.command(args))
    }

    /// Runs `BIN ARGS` in `cwd`, with `env` added, to its end.
    pub fn run_in<S: AsRef<OsStr>>(
        &self,
        cwd: &Path,
        args: impl IntoIterator<Item = S>,
        env: &[(&str, &str)],
    ) -> Output {
        output(
            self.command(args)
                .current_dir(cwd)
                .envs(env.iter().copied()),
        )
    }

    /// Starts `BIN ARGS` with its output discarded; killed and reaped when dropped.
    pub fn start<S: AsRef<OsStr>>(&self, args: impl IntoIterator<Item = S>) -> Guarded {
        let mut c = self.command(args);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        Guarded::start(c)
    }
}

/// Asserts that a run failed and that its stderr holds each of `needles`; returns the
/// stderr.
pub fn fails_with(o: &Output, needles: &[&str]) -> String {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "succeeded, expected a failure naming {needles:?}:\n{}{err}",
        stdout(o)
    );
    for n in needles {
        assert!(err.contains(n), "{n:?} not in: {err}");
    }
    err
}

/// A run's stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A run's stdout, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_in_a_dir_with_env() {
        let sh = Cli::new("/bin/sh");
        let o = sh.run(["-c", "echo hi; echo there >&2"]);
        assert!(o.status.success());
        assert_eq!((stdout(&o), stderr(&o)), ("hi\n".into(), "there\n".into()));
        let d = tempfile::tempdir().unwrap();
        let o = sh.run_in(d.path(), ["-c", "pwd; echo $X"], &[("X", "y")]);
        let want = format!("{}\ny\n", d.path().canonicalize().unwrap().display());
        assert_eq!(stdout(&o), want);
        // No stdin: a read sees its end at once.
        let o = sh.run(["-c", "read x || echo eof"]);
        assert_eq!(stdout(&o), "eof\n");
        let mut g = sh.start(["-c", "sleep 1000"]);
        g.check_alive();
    }

    #[test]
    fn a_failure_names_what_it_must() {
        let sh = Cli::new("/bin/sh");
        let o = sh.run(["-c", "echo 'no such thing: x' >&2; exit 1"]);
        assert_eq!(fails_with(&o, &["no such", "x"]), "no such thing: x\n");
        let ok = sh.run(["-c", "true"]);
        assert!(std::panic::catch_unwind(|| fails_with(&ok, &[])).is_err());
        assert!(std::panic::catch_unwind(|| fails_with(&o, &["absent"])).is_err());
    }
}
