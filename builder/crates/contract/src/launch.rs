//! The launch spec: the exact argv, environment and working directory that start a
//! release with no shell script, and the services the init starts before it. The builder
//! computes it and writes its JSON to [`LAUNCH_PATH`]; the init (and the OSv loader)
//! read it there.
//!
//! Owns: the types, their JSON form (field order and omitted defaults fixed: images are
//! reproducible, so the bytes must not change), and what a usable spec is
//! ([`LaunchSpec::validate`]: non-empty argv with an absolute program path, absolute
//! cwd, environment names usable by `execve`, no NUL bytes, sensible services).
//!
//! Must not: compute a spec for a release (the builder), start anything or read files
//! (the init).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ContractError;

pub use crate::paths::{LAUNCH_LINES_PATH, LAUNCH_PATH};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    /// Release name, for the init's `starting` line.
    pub release: String,
    /// Release version, for the init's `starting` line.
    pub vsn: String,
    /// `argv[0]` is the program to exec (erlexec), by absolute path; it is also passed
    /// as the program's `argv[0]`.
    pub argv: Vec<String>,
    /// The complete environment of the release (nothing is inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; `/` when absent.
    #[serde(default = "root_dir")]
    pub cwd: String,
    /// Processes the init starts, in order, before the release (e.g. epmd in an image
    /// without a shell: erlexec would start it through `/bin/sh`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Directories the release writes to (its log and tmp dirs); the init mounts a fresh
    /// tmpfs on each one that exists (the root may be read-only, and nothing written
    /// there survives a reboot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable: Vec<String>,
    /// The release's stdin is the console (its Erlang shell, `bin/NAME console`), not
    /// `/dev/null`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shell: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; `/` when absent (and then not written).
    #[serde(default = "root_dir", skip_serializing_if = "is_root_dir")]
    pub cwd: String,
    /// The release is not started until a TCP socket listens on PORT (the init reads
    /// the kernel's socket table, without connecting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_tcp: Option<u16>,
}

impl Service {
    /// A service running `argv` in `/` with an empty environment.
    pub fn new(name: impl Into<String>, argv: Vec<String>) -> Service {
        Service {
            name: name.into(),
            argv,
            env: BTreeMap::new(),
            cwd: root_dir(),
            wait_tcp: None,
        }
    }
}

fn root_dir() -> String {
    "/".to_string()
}

fn is_root_dir(s: &str) -> bool {
    s == "/"
}

impl LaunchSpec {
    /// The JSON written to [`LAUNCH_PATH`]: pretty, with a final newline. Fields and env
    /// are in a fixed order (BTreeMap): the bytes are reproducible.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses the JSON form (unknown fields ignored). Does not [`validate`](Self::validate).
    pub fn from_json(text: &str) -> Result<LaunchSpec, ContractError> {
        Self::from_json_bytes(text.as_bytes())
    }

    /// [`from_json`](Self::from_json) of raw bytes (as read from the image).
    pub fn from_json_bytes(bytes: &[u8]) -> Result<LaunchSpec, ContractError> {
        serde_json::from_slice(bytes).map_err(|e| ContractError::LaunchJson(e.to_string()))
    }

    /// The spec as lines, for the OSv loader (`start-otp.so`, C, no JSON parser), written
    /// to [`LAUNCH_LINES_PATH`]: `cwd DIR`, then `env NAME=VALUE` per variable (sorted),
    /// then `arg VALUE` per argv entry, each ending in a newline. A loader runs one program:
    /// a spec with services cannot be written this way, nor values holding a newline.
    pub fn to_lines(&self) -> Result<String, ContractError> {
        self.validate()?;
        if let Some(s) = self.services.first() {
            return Err(ContractError::LaunchInvalid(format!(
                "service {:?}: the OSv loader starts no services (epmd runs as a thread of erlexec)",
                s.name
            )));
        }
        let mut out = format!("cwd {}\n", self.cwd);
        let lines = self
            .env
            .iter()
            .map(|(k, v)| format!("env {k}={v}"))
            .chain(self.argv.iter().map(|a| format!("arg {a}")));
        for l in lines {
            if l.contains('\n') {
                return Err(ContractError::LaunchInvalid(format!(
                    "{l:?} holds a newline: the loader reads one entry per line"
                )));
            }
            out.push_str(&l);
            out.push('\n');
        }
        Ok(out)
    }

    /// Whether the init can run this spec; the error says what is wrong.
    pub fn validate(&self) -> Result<(), ContractError> {
        self.check().map_err(ContractError::LaunchInvalid)
    }

    fn check(&self) -> Result<(), String> {
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
            if s.wait_tcp == Some(0) {
                return Err(format!("{what}: wait_tcp must be a port in 1..=65535"));
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
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// A spec as the builder makes it for a distributed release (with epmd).
    fn sample() -> LaunchSpec {
        let mut epmd = Service::new("epmd", strings(&["/opt/echo/erts-13.1.5/bin/epmd"]));
        epmd.wait_tcp = Some(4369);
        let mut other = Service::new("s", strings(&["/bin/s", "-x"]));
        other.env.insert("A".into(), "b".into());
        LaunchSpec {
            release: "echo".into(),
            vsn: "0.1.0".into(),
            argv: strings(&[
                "/opt/echo/erts-13.1.5/bin/erlexec",
                "-noinput",
                "-boot",
                "/opt/echo/releases/0.1.0/start",
                "--",
            ]),
            env: BTreeMap::from([
                ("HOME".to_string(), "/tmp".to_string()),
                (
                    "BINDIR".to_string(),
                    "/opt/echo/erts-13.1.5/bin".to_string(),
                ),
            ]),
            cwd: "/opt/echo".into(),
            services: vec![epmd, other],
            writable: strings(&["/opt/echo/log", "/opt/echo/tmp"]),
            shell: false,
        }
    }

    #[test]
    fn lines_are_pinned_and_refuse_what_a_loader_cannot_run() {
        let mut spec = sample();
        let e = spec.to_lines().unwrap_err().to_string();
        assert!(
            e.contains("service \"epmd\": the OSv loader starts no services"),
            "{e}"
        );
        spec.services.clear();
        assert_eq!(
            spec.to_lines().unwrap(),
            "cwd /opt/echo\nenv BINDIR=/opt/echo/erts-13.1.5/bin\nenv HOME=/tmp\n\
             arg /opt/echo/erts-13.1.5/bin/erlexec\narg -noinput\narg -boot\n\
             arg /opt/echo/releases/0.1.0/start\narg --\n"
        );
        spec.argv.push("a\nb".into());
        let e = spec.to_lines().unwrap_err().to_string();
        assert!(e.contains("holds a newline"), "{e}");
    }

    /// The bytes written into every image: field order, env order, `"env": {}` of a
    /// service kept, empty services/writable and a service's `/` cwd and absent
    /// wait_tcp left out. Changing this changes every image.
    #[test]
    fn json_is_pinned() {
        assert_eq!(
            sample().to_json(),
            r#"{
  "release": "echo",
  "vsn": "0.1.0",
  "argv": [
    "/opt/echo/erts-13.1.5/bin/erlexec",
    "-noinput",
    "-boot",
    "/opt/echo/releases/0.1.0/start",
    "--"
  ],
  "env": {
    "BINDIR": "/opt/echo/erts-13.1.5/bin",
    "HOME": "/tmp"
  },
  "cwd": "/opt/echo",
  "services": [
    {
      "name": "epmd",
      "argv": [
        "/opt/echo/erts-13.1.5/bin/epmd"
      ],
      "env": {},
      "wait_tcp": 4369
    },
    {
      "name": "s",
      "argv": [
        "/bin/s",
        "-x"
      ],
      "env": {
        "A": "b"
      }
    }
  ],
  "writable": [
    "/opt/echo/log",
    "/opt/echo/tmp"
  ]
}
"#
        );
        let mut bare = sample();
        bare.services.clear();
        bare.writable.clear();
        bare.env.clear();
        assert_eq!(
            bare.to_json(),
            "{\n  \"release\": \"echo\",\n  \"vsn\": \"0.1.0\",\n  \"argv\": [\n    \
             \"/opt/echo/erts-13.1.5/bin/erlexec\",\n    \"-noinput\",\n    \"-boot\",\n    \
             \"/opt/echo/releases/0.1.0/start\",\n    \"--\"\n  ],\n  \"env\": {},\n  \
             \"cwd\": \"/opt/echo\"\n}\n"
        );
    }

    #[test]
    fn json_round_trips() {
        let mut s = sample();
        assert_eq!(LaunchSpec::from_json(&s.to_json()).unwrap(), s);
        s.services[1].cwd = "/srv".into();
        let json = s.to_json();
        assert!(json.contains("\"cwd\": \"/srv\""), "{json}");
        assert_eq!(LaunchSpec::from_json(&json).unwrap(), s);
        assert_eq!(s.validate(), Ok(()));
    }

    const FULL: &str = r#"{
        "release": "echo", "vsn": "0.1.0",
        "argv": ["/opt/echo/erts-13.1.5/bin/erlexec", "-noinput", "-boot", "/opt/echo/releases/0.1.0/start"],
        "env": {"BINDIR": "/opt/echo/erts-13.1.5/bin", "HOME": "/tmp"},
        "cwd": "/opt/echo",
        "services": [ {"name": "epmd", "argv": ["/opt/echo/erts-13.1.5/bin/epmd"], "env": {}, "wait_tcp": 4369} ],
        "future_field": {"whatever": [1, 2]}
    }"#;

    fn parse(json: &str) -> Result<LaunchSpec, ContractError> {
        let l = LaunchSpec::from_json(json)?;
        l.validate()?;
        Ok(l)
    }

    fn err(json: &str) -> String {
        match parse(json) {
            Ok(l) => panic!("expected an error, got {l:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn full_spec() {
        let l = parse(FULL).expect("valid");
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
        let l = parse(r#"{"release":"r","vsn":"1","argv":["/bin/true"]}"#).expect("valid");
        assert!(l.env.is_empty());
        assert_eq!(l.cwd, "/");
        assert!(l.services.is_empty());
        assert!(l.writable.is_empty());
    }

    #[test]
    fn service_defaults() {
        let l = parse(
            r#"{"release":"r","vsn":"1","argv":["/bin/true"],
                 "services":[{"name":"s","argv":["/bin/s"]}]}"#,
        )
        .expect("valid");
        assert_eq!(l.services[0], Service::new("s", strings(&["/bin/s"])));
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
        assert!(matches!(
            LaunchSpec::from_json_bytes(b"\xff"),
            Err(ContractError::LaunchJson(_))
        ));
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
        assert!(
            err(r#"{"release":"r","vsn":"1","argv":["/x"],"writable":["/"]}"#)
                .contains("writable entry")
        );
        assert!(matches!(
            parse(r#"{"release":"r","vsn":"1","argv":[]}"#),
            Err(ContractError::LaunchInvalid(_))
        ));
    }
}
