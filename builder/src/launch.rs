//! The launch spec: the exact argv, environment and working directory that start a
//! release with no shell script — what `bin/NAME foreground` (relx) or `bin/NAME start`
//! (mix) ends up exec'ing.
//!
//! Owns: that computation, for a release placed at a given root (`/opt/NAME` in a guest,
//! or the release's own directory on the host), and its JSON form stored in the image at
//! [`LAUNCH_PATH`] for the init and the OSv loader.
//!
//! Must not: start anything, or know about images.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::release::{Flavor, Release};

/// Where the spec lives in the guest.
pub const LAUNCH_PATH: &str = "/etc/beambake/launch.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub release: String,
    pub vsn: String,
    /// `argv[0]` is the program to exec (erlexec), by absolute path.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    /// Processes the init starts before the release (e.g. epmd in an image without a
    /// shell: erlexec would start it through `/bin/sh`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Directories the release writes to; the init mounts a fresh tmpfs on each (the
    /// root may be read-only, and nothing written there survives a reboot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Wait until a TCP socket listens on PORT before going on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_tcp: Option<u16>,
}

impl LaunchSpec {
    /// The spec for `rel` laid out at `root`.
    pub fn for_release(rel: &Release, root: &str) -> LaunchSpec {
        let root = root.trim_end_matches('/');
        let root = if root.is_empty() { "/" } else { root };
        let at = |rel_path: &str| {
            if root == "/" {
                format!("/{rel_path}")
            } else {
                format!("{root}/{rel_path}")
            }
        };
        let bindir = at(&format!("erts-{}/bin", rel.erts.vsn));
        let rel_dir = at(&format!("releases/{}", rel.vsn));
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_string(), v);
        };
        set("BINDIR", bindir.clone());
        set("ROOTDIR", root.to_string());
        set("EMU", "beam".into());
        set("PROGNAME", "erl".into());
        set("HOME", "/tmp".into());
        set("RELEASE_NAME", rel.name.clone());
        set("RELEASE_VSN", rel.vsn.clone());
        let mut argv = vec![format!("{bindir}/erlexec")];
        let mut push = |a: &[&str]| argv.extend(a.iter().map(|s| s.to_string()));
        match rel.flavor {
            Flavor::Relx => {
                set("REL_NAME", rel.name.clone());
                set("RELEASE_ROOT_DIR", root.to_string());
                push(&["-noinput", "+Bd", "-boot", &at(&rel.boot_rel)]);
                push(&["-mode", "embedded"]);
                push(&["-boot_var", "SYSTEM_LIB_DIR", &at("lib")]);
            }
            Flavor::Mix => {
                set("RELEASE_ROOT", root.to_string());
                set("RELEASE_COMMAND", "start".into());
                set("RELEASE_MODE", "embedded".into());
                set("RELEASE_TMP", "/tmp".into());
                set("RELEASE_VSN_DIR", rel_dir.clone());
                set("RELEASE_SYS_CONFIG", format!("{rel_dir}/sys"));
                push(&["-elixir", "ansi_enabled", "false", "-noshell"]);
                push(&["-s", "elixir", "start_cli", "-mode", "embedded"]);
                push(&["-boot", &at(&rel.boot_rel)]);
                push(&["-boot_var", "RELEASE_LIB", &at("lib")]);
            }
        }
        if let Some(sc) = &rel.sys_config_rel {
            let sc = sc.strip_suffix(".config").unwrap_or(sc);
            push(&["-config", &at(sc)]);
        }
        if let Some(va) = &rel.vm_args_rel {
            push(&["-args_file", &at(va)]);
        }
        match rel.flavor {
            Flavor::Relx => push(&["--"]),
            Flavor::Mix => push(&["-extra", "--no-halt"]),
        }
        LaunchSpec {
            release: rel.name.clone(),
            vsn: rel.vsn.clone(),
            argv,
            env,
            cwd: root.to_string(),
            services: Vec::new(),
            writable: vec![format!("{root}/log"), format!("{root}/tmp")],
        }
    }

    /// Replaces the code loading mode (`embedded` or `interactive`).
    pub fn with_mode(mut self, mode: &str) -> LaunchSpec {
        if let Some(i) = self.argv.iter().position(|a| a == "-mode") {
            if let Some(v) = self.argv.get_mut(i + 1) {
                *v = mode.to_string();
            }
        }
        self
    }

    /// Runs the release as a distributed node `node` with `cookie`, with epmd started by
    /// the init (`-start_epmd false`: erlexec would need a shell to start it).
    pub fn with_distribution(self, node: &str, cookie: &str) -> LaunchSpec {
        let epmd = format!(
            "{}/epmd",
            self.env.get("BINDIR").cloned().unwrap_or_default()
        );
        let mut spec =
            self.with_args(&["-name", node, "-setcookie", cookie, "-start_epmd", "false"]);
        spec.services.push(Service {
            name: "epmd".into(),
            argv: vec![epmd],
            env: BTreeMap::new(),
            wait_tcp: Some(4369),
        });
        spec
    }

    /// Extra emulator or init arguments, inserted before the trailing `--`/`-extra`
    /// (e.g. `-echo port 18080` to override an application parameter).
    pub fn with_args(mut self, args: &[&str]) -> LaunchSpec {
        let at = self
            .argv
            .iter()
            .rposition(|a| a == "--" || a == "-extra")
            .unwrap_or(self.argv.len());
        for (i, a) in args.iter().enumerate() {
            self.argv.insert(at + i, a.to_string());
        }
        self
    }

    pub fn to_json(&self) -> String {
        // Fields and env are in a fixed order (BTreeMap): the bytes are reproducible.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn from_json(text: &str) -> Result<LaunchSpec, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// A `std::process::Command` for this spec (environment cleared, then set).
    pub fn command(&self) -> std::process::Command {
        let (prog, args) = self
            .argv
            .split_first()
            .map_or(("", &[][..]), |(p, a)| (p.as_str(), a));
        let mut c = std::process::Command::new(prog);
        c.args(args)
            .env_clear()
            .envs(&self.env)
            .current_dir(&self.cwd);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LaunchSpec {
        LaunchSpec {
            release: "r".into(),
            vsn: "1".into(),
            argv: ["/o/erts/bin/erlexec", "-mode", "embedded", "--"]
                .map(String::from)
                .to_vec(),
            env: BTreeMap::from([("BINDIR".to_string(), "/o/erts/bin".to_string())]),
            cwd: "/o".into(),
            services: vec![],
            writable: vec![],
        }
    }

    #[test]
    fn args_go_before_the_separator_and_mode_is_replaced() {
        let s = spec().with_args(&["+S", "1:1"]).with_mode("interactive");
        assert_eq!(
            s.argv,
            [
                "/o/erts/bin/erlexec",
                "-mode",
                "interactive",
                "+S",
                "1:1",
                "--"
            ]
        );
    }

    #[test]
    fn distribution_adds_node_cookie_and_an_epmd_service() {
        let s = spec().with_distribution("n@10.0.0.2", "c");
        assert!(s.argv.windows(2).any(|w| w == ["-name", "n@10.0.0.2"]));
        assert!(s.argv.windows(2).any(|w| w == ["-start_epmd", "false"]));
        assert_eq!(s.services[0].argv, ["/o/erts/bin/epmd"]);
        assert_eq!(s.services[0].wait_tcp, Some(4369));
        assert_eq!(LaunchSpec::from_json(&s.to_json()).unwrap(), s);
    }
}
