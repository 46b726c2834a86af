//! The launch spec: the exact argv, environment and working directory that start a
//! release with no shell script — what `bin/NAME foreground` (relx) or `bin/NAME start`
//! (mix) ends up exec'ing.
//!
//! Owns: that computation ([`LaunchSpecExt`]), for a release placed at a given root
//! (`/opt/NAME` in a guest, or the release's own directory on the host), and the
//! release's distribution (node name, cookie). The spec's types and its JSON form, stored
//! in the image at [`LAUNCH_PATH`] for the init and the OSv loader, are the host/guest
//! contract's ([`beambake_contract::launch`]).
//!
//! Must not: start anything, or know about images.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::release::{Flavor, Release};

/// The spec's types, JSON form and guest path are the host/guest contract's.
pub use beambake_contract::launch::{LaunchSpec, Service, LAUNCH_PATH};

/// What the builder computes: the spec for a release, and its changes (the type is the
/// contract's, so these are an extension trait).
pub trait LaunchSpecExt: Sized {
    /// The spec for `rel` laid out at `root`.
    fn for_release(rel: &Release, root: &str) -> Self;

    /// Replaces the code loading mode (`embedded` or `interactive`).
    fn with_mode(self, mode: &str) -> Self;
    /// The boot script (a path without `.boot`) replacing the release's.
    fn with_boot(self, boot: &str) -> Self;

    /// Runs the release as the distributed node `dist`, with epmd started by the init
    /// (`-start_epmd false`: erlexec would need a shell to start it). The release's
    /// `vm.args` (`vm_args`, its arguments) is inlined in place of its `-args_file` without
    /// its `-name`/`-sname`/`-setcookie`/`-start_epmd` (the file itself stays as the
    /// user wrote it), so the node has exactly one name and one cookie.
    fn with_distribution(self, vm_args: &[String], dist: &Distribution) -> Self;

    /// Extra emulator or init arguments, inserted before the trailing `--`/`-extra`
    /// (e.g. `-echo port 18080` to override an application parameter).
    fn with_args(self, args: &[&str]) -> Self;

    /// For an erlexec that runs epmd itself (the osv patch set: epmd as a thread of
    /// erlexec; nothing can be spawned): no epmd service and no `-start_epmd false`.
    fn with_epmd_in_erlexec(self) -> Self;

    /// The release's Erlang shell on the console (`bin/NAME console`): stdin is the
    /// console, no `-noinput`/`-noshell`.
    fn with_shell(self) -> Self;

    /// A `std::process::Command` for this spec (environment cleared, then set).
    fn command(&self) -> std::process::Command;
}

impl LaunchSpecExt for LaunchSpec {
    fn for_release(rel: &Release, root: &str) -> LaunchSpec {
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
            shell: false,
        }
    }

    fn with_mode(mut self, mode: &str) -> LaunchSpec {
        if let Some(i) = self.argv.iter().position(|a| a == "-mode") {
            if let Some(v) = self.argv.get_mut(i + 1) {
                *v = mode.to_string();
            }
        }
        self
    }

    fn with_boot(mut self, boot: &str) -> LaunchSpec {
        if let Some(i) = self.argv.iter().position(|a| a == "-boot") {
            if let Some(v) = self.argv.get_mut(i + 1) {
                *v = boot.to_string();
            }
        }
        self
    }

    fn with_distribution(mut self, vm_args: &[String], dist: &Distribution) -> LaunchSpec {
        if let Some(i) = self.argv.iter().position(|a| a == "-args_file") {
            let kept = without_distribution_args(vm_args);
            self.argv.splice(i..(i + 2).min(self.argv.len()), kept);
        }
        let epmd = format!(
            "{}/epmd",
            self.env.get("BINDIR").cloned().unwrap_or_default()
        );
        let flag = match dist.names {
            Names::Long => "-name",
            Names::Short => "-sname",
        };
        let cookie = match &dist.cookie_file {
            Some(file) => ["-args_file", file.as_str()],
            None => ["-setcookie", dist.cookie.as_str()],
        };
        let mut spec = self.with_args(&[
            flag,
            &dist.node,
            cookie[0],
            cookie[1],
            "-start_epmd",
            "false",
        ]);
        spec.services.push(Service {
            wait_tcp: Some(4369),
            ..Service::new("epmd", vec![epmd])
        });
        spec
    }

    fn with_epmd_in_erlexec(mut self) -> LaunchSpec {
        self.services.retain(|s| s.name != "epmd");
        if let Some(i) = self
            .argv
            .windows(2)
            .position(|w| w[0] == "-start_epmd" && w[1] == "false")
        {
            self.argv.drain(i..i + 2);
        }
        self
    }

    fn with_shell(mut self) -> LaunchSpec {
        self.argv.retain(|a| a != "-noinput" && a != "-noshell");
        self.shell = true;
        self
    }

    fn with_args(mut self, args: &[&str]) -> LaunchSpec {
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

    fn command(&self) -> std::process::Command {
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

/// A random distribution cookie: 32 characters from the kernel's CSPRNG.
pub fn random_cookie() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    Ok(b.iter()
        .map(|x| ALPHABET[(*x & 31) as usize] as char)
        .collect())
}

/// Long (`NAME@IP`) or short (`NAME@HOSTNAME`) node names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Names {
    #[default]
    Long,
    Short,
}

/// Who chose the cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CookieSource {
    /// The recipe's `[distribution] cookie`.
    Recipe,
    /// The release's `vm.args` (`-setcookie`): kept, and baked into the image.
    Release,
    /// Drawn at random for this build.
    Random,
}

/// A distributed node as the image starts it: one name, one cookie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Distribution {
    /// The name the launch spec passes (`NAME@IP` for long names; `NAME` or
    /// `NAME@HOST` for short ones). Each VM of a shared image gets its own at boot.
    pub node: String,
    /// The name without its host.
    pub name: String,
    pub names: Names,
    #[serde(skip)]
    pub cookie: String,
    pub cookie_source: CookieSource,
    /// A random cookie is read from this guest file (`-args_file`; the target adds the
    /// file to its image per build, outside the tree) rather than passed in the launch
    /// spec: [`DistributionRequest::cookie_file`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cookie_file: Option<String>,
    /// What beambake changed from the release's `vm.args`, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What the build asks for: the recipe's `[distribution]` (present even when empty) and
/// the guest's address, used for long names.
#[derive(Debug, Clone, Default)]
pub struct DistributionRequest {
    /// `[distribution]` is in the recipe (the node is distributed even when the release
    /// does not name it).
    pub wanted: bool,
    pub node: Option<String>,
    pub cookie: Option<String>,
    /// The guest's address (`NAME@HERE` for long names); `None` when unknown (`rootfs`).
    pub host: Option<String>,
    /// Where a random cookie goes, when the target keeps it out of the tree (the tree,
    /// and so the build cache's key, then do not depend on it).
    pub cookie_file: Option<String>,
}

/// How a release runs distributed: the recipe's `[distribution]` (`req`) wins; else the
/// release's `vm.args` (`-sname N` or `-name N[@H]`, and `-setcookie C`) decides, with a
/// long name on a loopback or missing host moved to the guest's address; a release that
/// names no node and a recipe that asks for none give `Ok(None)`. The cookie: the
/// recipe's, else the release's (kept: the user chose it), else `random()`. `vm_args_file`
/// names the file in errors.
pub fn resolve_distribution(
    release_name: &str,
    vm_args: &[String],
    vm_args_file: &str,
    req: &DistributionRequest,
    random: impl FnOnce() -> std::io::Result<String>,
) -> Result<Option<Distribution>, String> {
    let value = |flag: &str| {
        let mut found = vm_args
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone());
        found.next()
    };
    let (long, short) = (value("-name"), value("-sname"));
    if long.is_some() && short.is_some() {
        return Err(format!(
            "{vm_args_file}: sets both -name and -sname; a node has one name (keep one)"
        ));
    }
    let mut notes = Vec::new();
    let at_host = |name: &str| match &req.host {
        Some(h) => format!("{name}@{h}"),
        None => name.to_string(),
    };
    let (node, names) = if let Some(n) = &req.node {
        if let Some(v) = long.as_ref().or(short.as_ref()) {
            notes.push(format!(
                "the recipe's [distribution] node {n} replaces {v} from {vm_args_file}"
            ));
        }
        (at_host(n), Names::Long)
    } else if let Some(v) = short {
        (v, Names::Short)
    } else if let Some(v) = long {
        let (n, h) = v
            .split_once('@')
            .map_or((v.as_str(), None), |(n, h)| (n, Some(h)));
        let loopback = h.is_none_or(|h| {
            h == "localhost"
                || h == "::1"
                || h.parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|a| a.is_loopback())
        });
        match &req.host {
            Some(guest) if loopback => {
                let node = format!("{n}@{guest}");
                notes.push(format!(
                    "-name {v} from {vm_args_file} becomes {node}: the guest's address"
                ));
                (node, Names::Long)
            }
            _ => (v.clone(), Names::Long),
        }
    } else if req.wanted {
        (at_host(release_name), Names::Long)
    } else {
        return Ok(None);
    };
    let name = node.split('@').next().unwrap_or(&node).to_string();
    if name.is_empty() {
        return Err(format!("{vm_args_file}: empty node name in {node:?}"));
    }
    let (cookie, cookie_source) = match (&req.cookie, value("-setcookie")) {
        (Some(c), from_release) => {
            if from_release.is_some() {
                notes.push(format!(
                    "the recipe's [distribution] cookie replaces -setcookie from {vm_args_file}"
                ));
            }
            (c.clone(), CookieSource::Recipe)
        }
        (None, Some(c)) => (c, CookieSource::Release),
        (None, None) => (
            random().map_err(|e| format!("drawing a random cookie: {e}"))?,
            CookieSource::Random,
        ),
    };
    Ok(Some(Distribution {
        node,
        name,
        names,
        cookie,
        cookie_file: req
            .cookie_file
            .clone()
            .filter(|_| cookie_source == CookieSource::Random),
        cookie_source,
        notes,
    }))
}

/// `vm_args` without the flags that name the node or set its cookie (and their values).
fn without_distribution_args(vm_args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = vm_args.iter();
    while let Some(a) = it.next() {
        if ["-name", "-sname", "-setcookie", "-start_epmd"].contains(&a.as_str()) {
            it.next();
        } else {
            out.push(a.clone());
        }
    }
    out
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
            shell: false,
        }
    }

    #[test]
    fn a_shell_reads_the_console() {
        let mut s = spec();
        s.argv.insert(1, "-noinput".into());
        let s = s.with_shell();
        assert!(s.shell);
        assert!(!s.argv.iter().any(|a| a == "-noinput" || a == "-noshell"));
        assert!(s.to_json().contains("\"shell\": true"));
        assert!(
            !spec().to_json().contains("shell"),
            "absent when off: bytes unchanged"
        );
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

    fn dist(node: &str, names: Names) -> Distribution {
        Distribution {
            node: node.into(),
            name: node.split('@').next().unwrap().into(),
            names,
            cookie: "c".into(),
            cookie_source: CookieSource::Recipe,
            cookie_file: None,
            notes: vec![],
        }
    }

    fn args(s: &str) -> Vec<String> {
        crate::release::parse_args_file(s)
    }

    fn resolve(vm: &str, req: &DistributionRequest) -> Result<Option<Distribution>, String> {
        resolve_distribution("rel", &args(vm), "vm.args", req, || Ok("RANDOM".into()))
    }

    fn guest() -> DistributionRequest {
        DistributionRequest {
            host: Some("10.0.0.2".into()),
            ..Default::default()
        }
    }

    #[test]
    fn cookies_are_random() {
        let a = random_cookie().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_cookie().unwrap());
    }

    #[test]
    fn vm_args_name_the_node() {
        // rebar3's template: -sname and -setcookie; the cookie is kept and said.
        let d = resolve("-sname myrel\n-setcookie myrel_cookie\n+K true", &guest())
            .unwrap()
            .unwrap();
        assert_eq!((d.node.as_str(), d.names), ("myrel", Names::Short));
        assert_eq!(
            (d.cookie.as_str(), d.cookie_source),
            ("myrel_cookie", CookieSource::Release)
        );
        assert!(d.notes.is_empty(), "{:?}", d.notes);
        // -name on loopback or with no host moves to the guest's address.
        for v in ["-name a@127.0.0.1", "-name a@localhost", "-name a"] {
            let d = resolve(v, &guest()).unwrap().unwrap();
            assert_eq!(
                (d.node.as_str(), d.names),
                ("a@10.0.0.2", Names::Long),
                "{v}"
            );
            assert_eq!(d.cookie_source, CookieSource::Random);
            assert!(d.notes[0].contains("becomes a@10.0.0.2"), "{:?}", d.notes);
        }
        // Another host is the user's choice.
        let d = resolve("-name a@db.example.com", &guest())
            .unwrap()
            .unwrap();
        assert_eq!(d.node, "a@db.example.com");
        // Nothing asked, nothing named: not distributed.
        assert_eq!(resolve("+K true", &guest()).unwrap(), None);
    }

    #[test]
    fn the_recipe_overrides_and_both_names_are_an_error() {
        let req = DistributionRequest {
            wanted: true,
            node: Some("n".into()),
            cookie: Some("rc".into()),
            host: Some("10.0.0.2".into()),
            cookie_file: None,
        };
        let d = resolve("-sname myrel\n-setcookie x", &req)
            .unwrap()
            .unwrap();
        assert_eq!((d.node.as_str(), d.names), ("n@10.0.0.2", Names::Long));
        assert_eq!(
            (d.cookie.as_str(), d.cookie_source),
            ("rc", CookieSource::Recipe)
        );
        assert_eq!(d.notes.len(), 2);
        // [distribution] with no node: the release's name, or the recipe's wish alone.
        let req = DistributionRequest {
            wanted: true,
            ..guest()
        };
        assert_eq!(resolve("", &req).unwrap().unwrap().node, "rel@10.0.0.2");
        let err = resolve("-name a@127.0.0.1\n-sname b", &guest()).unwrap_err();
        assert!(
            err.contains("vm.args") && err.contains("both -name and -sname"),
            "{err}"
        );
    }

    #[test]
    fn distribution_inlines_vm_args_without_name_or_cookie() {
        let mut base = spec();
        base.argv.insert(3, "-args_file".into());
        base.argv.insert(4, "/o/releases/1/vm.args".into());
        let vm = args("-sname myrel\n-setcookie old\n+K true\n-start_epmd true\n+A30");
        let s = base.with_distribution(&vm, &dist("myrel", Names::Short));
        assert_eq!(
            s.argv,
            [
                "/o/erts/bin/erlexec",
                "-mode",
                "embedded",
                "+K",
                "true",
                "+A30",
                "-sname",
                "myrel",
                "-setcookie",
                "c",
                "-start_epmd",
                "false",
                "--"
            ]
        );
    }

    #[test]
    fn distribution_adds_node_cookie_and_an_epmd_service() {
        let s = spec().with_distribution(&[], &dist("n@10.0.0.2", Names::Long));
        assert!(s.argv.windows(2).any(|w| w == ["-name", "n@10.0.0.2"]));
        assert!(s.argv.windows(2).any(|w| w == ["-start_epmd", "false"]));
        assert_eq!(s.services[0].argv, ["/o/erts/bin/epmd"]);
        assert_eq!(s.services[0].wait_tcp, Some(4369));
        assert_eq!(LaunchSpec::from_json(&s.to_json()).unwrap(), s);
    }

    #[test]
    fn a_random_cookie_kept_out_of_the_tree_is_read_from_its_file() {
        let req = DistributionRequest {
            wanted: true,
            cookie_file: Some("/etc/c.args".into()),
            ..guest()
        };
        let d = resolve("", &req).unwrap().unwrap();
        assert_eq!(d.cookie_source, CookieSource::Random);
        assert_eq!(d.cookie_file.as_deref(), Some("/etc/c.args"));
        let s = spec().with_distribution(&[], &d);
        assert!(s
            .argv
            .windows(2)
            .any(|w| w == ["-args_file", "/etc/c.args"]));
        assert!(
            !s.to_json().contains("RANDOM"),
            "the cookie is not in the spec"
        );

        let chosen = DistributionRequest {
            cookie: Some("mine".into()),
            ..req
        };
        let d = resolve("", &chosen).unwrap().unwrap();
        assert_eq!(d.cookie_file, None, "a chosen cookie stays in the spec");
        let s = spec().with_distribution(&[], &d);
        assert!(s.argv.windows(2).any(|w| w == ["-setcookie", "mine"]));
    }
}
