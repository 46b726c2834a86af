//! Looking things up on the host: programs on `PATH`.
//!
//! Must not: run anything.

use std::path::PathBuf;

/// The first `name` on `PATH` that is a file.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(super::which("sh").is_some());
        assert!(super::which("no-such-program-beambake").is_none());
    }
}
