//! The launch specification, `/etc/beambake/launch.json`: its types, its
//! parsing (serde; unknown fields ignored) and its validation.
//!
//! Owns: what a valid spec is (non-empty argv with an absolute program path,
//! absolute cwd, environment names usable by `execve`, no NUL bytes, sensible
//! service definitions) and the error messages that say what is wrong.
//!
//! Must not: spawn anything, touch the system, or log. Loading returns a
//! `Result`; the caller decides that an error is fatal.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

pub const LAUNCH_PATH: &str = "/etc/beambake/launch.json";

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Launch {
    /// Release name, for the `starting` line.
    pub release: String,
    /// Release version, for the `starting` line.
    pub vsn: String,
    /// Program and arguments; `argv[0]` is an absolute path and is also
    /// passed as the program's argv[0].
    pub argv: Vec<String>,
    /// The complete environment of the release (nothing is inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; `/` when absent.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// Started in order before the release.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Directories the release writes to (its log and tmp dirs): a fresh tmpfs is
    /// mounted on each one that exists, so a read-only root still works and nothing
    /// written there survives a reboot.
    #[serde(default)]
    pub writable: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; `/` when absent.
    #[serde(default = "default_cwd")]
    pub cwd: String,
    /// If set, the release is not started until a TCP socket listens on
    /// PORT (read from the kernel's socket table, without connecting).
    #[serde(default)]
    pub wait_tcp: Option<u16>,
}

fn default_cwd() -> String {
    "/".to_string()
}

/// Why a spec could not be used; the message names the file and the problem.
#[derive(Debug)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn load(path: &Path) -> Result<Launch, SpecError> {
    let text = std::fs::read(path)
        .map_err(|e| SpecError(format!("cannot read {}: {e}", path.display())))?;
    parse(&text).map_err(|e| SpecError(format!("{}: {}", path.display(), e.0)))
}

pub fn parse(bytes: &[u8]) -> Result<Launch, SpecError> {
    let launch: Launch = serde_json::from_slice(bytes)
        .map_err(|e| SpecError(format!("not a valid launch spec: {e}")))?;
    launch.validate().map_err(SpecError)?;
    Ok(launch)
}

impl Launch {
    pub fn validate(&self) -> Result<(), String> {
        check_text("release", &self.release)?;
        check_text("vsn", &self.vsn)?;
        check_command("release", &self.argv, &self.env, &self.cwd)?;
        for (i, s) in self.services.iter().enumerate() {
            let what = format!("services[{i}]");
            if s.name.is_empty() {
                return Err(format!("{what}.name is empty"));
            }
            check_text(&format!("{what}.name"), &s.name)?;
            let what = format!("service {:?}", s.name);
            check_command(&what, &s.argv, &s.env, &s.cwd)?;
            if let Some(p) = s.wait_tcp {
                if p == 0 {
                    return Err(format!("{what}: wait_tcp must be a port in 1..=65535"));
                }
            }
        }
        for w in &self.writable {
            if !w.starts_with('/') || w == "/" {
                return Err(format!(
                    "writable entry {w:?} is not an absolute path other than /"
                ));
            }
            check_text("writable", w)?;
        }
        Ok(())
    }
}

/// `argv` with the value after `-name`/`-sname` replaced by `node` (unchanged when the
/// release is not distributed).
pub fn with_node(argv: &[String], node: &str) -> Vec<String> {
    let mut v = argv.to_vec();
    for i in 0..v.len().saturating_sub(1) {
        if v[i] == "-name" || v[i] == "-sname" {
            v[i + 1] = node.to_string();
        }
    }
    v
}

fn check_text(what: &str, v: &str) -> Result<(), String> {
    if v.contains('\0') || v.contains('\n') {
        return Err(format!("{what} contains a NUL or newline"));
    }
    Ok(())
}

fn check_command(
    what: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    cwd: &str,
) -> Result<(), String> {
    let Some(prog) = argv.first() else {
        return Err(format!("{what}: argv is empty"));
    };
    if !prog.starts_with('/') {
        return Err(format!("{what}: argv[0] {prog:?} must be an absolute path"));
    }
    if let Some(a) = argv.iter().find(|a| a.contains('\0')) {
        return Err(format!("{what}: argument {a:?} contains a NUL byte"));
    }
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(format!("{what}: invalid environment variable name {k:?}"));
        }
        if v.contains('\0') {
            return Err(format!("{what}: value of {k} contains a NUL byte"));
        }
    }
    if !cwd.starts_with('/') || cwd.contains('\0') {
        return Err(format!("{what}: cwd {cwd:?} must be an absolute path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn node_replaces_name_values_only() {
        let argv: Vec<String> = [
            "/erts/bin/erlexec",
            "-name",
            "echo@10.0.0.1",
            "-setcookie",
            "c",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let v = with_node(&argv, "echo@10.0.0.2");
        assert_eq!(v[2], "echo@10.0.0.2");
        assert_eq!(v[4], "c");
        let plain: Vec<String> = vec!["/x".into(), "-noshell".into()];
        assert_eq!(with_node(&plain, "a@b"), plain);
    }
    use super::*;

    const FULL: &str = r#"{
        "release": "echo", "vsn": "0.1.0",
        "argv": ["/opt/echo/erts-13.1.5/bin/erlexec", "-noinput", "-boot", "/opt/echo/releases/0.1.0/start"],
        "env": {"BINDIR": "/opt/echo/erts-13.1.5/bin", "HOME": "/tmp"},
        "cwd": "/opt/echo",
        "services": [ {"name": "epmd", "argv": ["/opt/echo/erts-13.1.5/bin/epmd"], "env": {}, "wait_tcp": 4369} ],
        "future_field": {"whatever": [1, 2]}
    }"#;

    fn err(json: &str) -> String {
        match parse(json.as_bytes()) {
            Ok(l) => panic!("expected an error, got {l:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn full_spec() {
        let l = parse(FULL.as_bytes()).expect("valid");
        assert_eq!(l.release, "echo");
        assert_eq!(l.vsn, "0.1.0");
        assert_eq!(l.argv[0], "/opt/echo/erts-13.1.5/bin/erlexec");
        assert_eq!(l.argv.len(), 4);
        assert_eq!(l.env.get("HOME").map(String::as_str), Some("/tmp"));
        assert_eq!(l.cwd, "/opt/echo");
        assert_eq!(l.services.len(), 1);
        assert_eq!(l.services[0].name, "epmd");
        assert_eq!(l.services[0].wait_tcp, Some(4369));
        assert_eq!(l.services[0].cwd, "/");
    }

    #[test]
    fn minimal_spec_defaults() {
        let l = parse(br#"{"release":"r","vsn":"1","argv":["/bin/true"]}"#).expect("valid");
        assert!(l.env.is_empty());
        assert_eq!(l.cwd, "/");
        assert!(l.services.is_empty());
    }

    #[test]
    fn service_defaults() {
        let l = parse(
            br#"{"release":"r","vsn":"1","argv":["/bin/true"],
                 "services":[{"name":"s","argv":["/bin/s"]}]}"#,
        )
        .expect("valid");
        assert_eq!(l.services[0].wait_tcp, None);
        assert!(l.services[0].env.is_empty());
    }

    #[test]
    fn garbled_and_missing_fields() {
        assert!(err("").contains("not a valid launch spec"));
        assert!(err("{").contains("not a valid launch spec"));
        assert!(err("[]").contains("not a valid launch spec"));
        assert!(err(r#"{"vsn":"1","argv":["/x"]}"#).contains("missing field `release`"));
        assert!(err(r#"{"release":"r","argv":["/x"]}"#).contains("missing field `vsn`"));
        assert!(err(r#"{"release":"r","vsn":"1"}"#).contains("missing field `argv`"));
        assert!(err(r#"{"release":"r","vsn":"1","argv":"/x"}"#).contains("invalid type"));
        assert!(
            err(r#"{"release":"r","vsn":"1","argv":["/x"],"env":{"A":1}}"#)
                .contains("invalid type")
        );
        assert!(err(
            r#"{"release":"r","vsn":"1","argv":["/x"],"services":[{"name":"s","argv":["/s"],"wait_tcp":70000}]}"#
        )
        .contains("invalid value"));
    }

    #[test]
    fn invalid_specs() {
        assert!(err(r#"{"release":"r","vsn":"1","argv":[]}"#).contains("argv is empty"));
        assert!(err(r#"{"release":"r","vsn":"1","argv":["erl"]}"#).contains("absolute path"));
        assert!(err(r#"{"release":"r","vsn":"1","argv":["/x"],"cwd":"opt"}"#).contains("cwd"));
        assert!(
            err(r#"{"release":"r","vsn":"1","argv":["/x"],"env":{"A=B":"c"}}"#)
                .contains("invalid environment variable name")
        );
        assert!(err(r#"{"release":"r","vsn":"1","argv":["/x","a\u0000b"]}"#).contains("NUL"));
        assert!(err(
            r#"{"release":"r","vsn":"1","argv":["/x"],"services":[{"name":"s","argv":[]}]}"#
        )
        .contains("service \"s\": argv is empty"));
        assert!(err(
            r#"{"release":"r","vsn":"1","argv":["/x"],"services":[{"name":"","argv":["/s"]}]}"#
        )
        .contains("services[0].name is empty"));
        assert!(err(
            r#"{"release":"r","vsn":"1","argv":["/x"],"services":[{"name":"s","argv":["/s"],"wait_tcp":0}]}"#
        )
        .contains("wait_tcp"));
    }

    #[test]
    fn missing_file_message_names_path() {
        let e = match load(Path::new("/nonexistent/beambake/launch.json")) {
            Ok(_) => panic!("should fail"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.starts_with("cannot read /nonexistent/beambake/launch.json"),
            "{e}"
        );
    }
}
