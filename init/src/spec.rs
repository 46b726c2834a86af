//! Loading the launch specification ([`beambake_contract::LAUNCH_PATH`]): reading the
//! file, parsing and validating it with the contract ([`LaunchSpec`]), and applying
//! `beambake.node` to its argv.
//!
//! Owns: the error messages that name the file and say what is wrong.
//!
//! Must not: spawn anything, touch the system beyond reading the file, or log. Loading
//! returns a `Result`; the caller decides that an error is fatal.

use std::fmt;
use std::path::Path;

use beambake_contract::LaunchSpec;

/// Why a spec could not be used; the message names the file and the problem.
#[derive(Debug)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn load(path: &Path) -> Result<LaunchSpec, SpecError> {
    let text = std::fs::read(path)
        .map_err(|e| SpecError(format!("cannot read {}: {e}", path.display())))?;
    parse(&text).map_err(|e| SpecError(format!("{}: {}", path.display(), e.0)))
}

/// A usable spec from the file's bytes (unknown fields ignored).
pub fn parse(bytes: &[u8]) -> Result<LaunchSpec, SpecError> {
    let launch = LaunchSpec::from_json_bytes(bytes).map_err(|e| SpecError(e.to_string()))?;
    launch.validate().map_err(|e| SpecError(e.to_string()))?;
    Ok(launch)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn err(json: &str) -> String {
        match parse(json.as_bytes()) {
            Ok(l) => panic!("expected an error, got {l:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Parsing and validation are the contract's (tested there); this checks that both
    /// are applied.
    #[test]
    fn parses_and_validates() {
        let l = parse(br#"{"release":"r","vsn":"1","argv":["/bin/true"]}"#).expect("valid");
        assert_eq!(l.cwd, "/");
        assert!(err("{").starts_with("not a valid launch spec"));
        assert_eq!(
            err(r#"{"release":"r","vsn":"1","argv":[]}"#),
            "release: argv is empty"
        );
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

    #[test]
    fn bad_file_message_names_path() {
        let d = std::env::temp_dir().join(format!("beambake-init-spec-{}", std::process::id()));
        std::fs::write(&d, "[]").unwrap();
        let e = load(&d).unwrap_err().to_string();
        let _ = std::fs::remove_file(&d);
        assert!(
            e.starts_with(&format!("{}: not a valid launch spec", d.display())),
            "{e}"
        );
    }
}
