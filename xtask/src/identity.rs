//! `cargo xtask identity BASELINE_BEAMBAKE`: proves a change left the images alone. Both
//! binaries (the given one, e.g. built from the landed main, and this tree's) build the
//! same inputs — every recipe in `recipes/` with a fixed cookie (so the images are
//! reproducible), an ext4 variant of the uml recipe, and `beambake rootfs` as cpio.gz,
//! cpio.zst and ISO — into the same directory, one after the other, with the same
//! `SOURCE_DATE_EPOCH`; every artefact's sha256 must match. `boot.json` and the manifests
//! are compared too (they name the output paths, which is why the directory is the same).
//!
//! Must not: interpret images (bytes are the judge here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

/// The cookie every copied recipe gets.
const COOKIE: &str = "identitycheck";

pub fn identity(sh: &Shell, root: &Path, baseline: &Path) -> Result<()> {
    if !baseline.is_file() {
        bail!("{}: no such beambake binary (build the baseline first, e.g. from a worktree of the landed main)", baseline.display());
    }
    cmd!(sh, "cargo build -q -p beambake").run()?;
    let current = root.join("target/debug/beambake");
    let work = root.join("target/identity");
    let old = artefacts(root, &work, baseline).context("the baseline's build")?;
    let new = artefacts(root, &work, &current).context("this tree's build")?;
    let mut differ = 0;
    for (path, sha) in &old {
        match new.get(path) {
            Some(s) if s == sha => {}
            Some(s) => {
                differ += 1;
                println!("differs: {path}\n  baseline {sha}\n  current  {s}");
            }
            None => {
                differ += 1;
                println!("missing in the current build: {path}");
            }
        }
    }
    for path in new.keys().filter(|p| !old.contains_key(*p)) {
        differ += 1;
        println!("new in the current build: {path}");
    }
    if differ > 0 {
        bail!("{differ} of {} artefacts differ", old.len().max(new.len()));
    }
    println!("identity: {} artefacts byte-identical", old.len());
    Ok(())
}

/// Builds every input with `beambake` under `work` and returns path -> sha256.
fn artefacts(root: &Path, work: &Path, beambake: &Path) -> Result<BTreeMap<String, String>> {
    let _ = std::fs::remove_dir_all(work);
    let tree = work.join("tree");
    let out = work.join("out");
    std::fs::create_dir_all(tree.join("recipes"))?;
    std::fs::create_dir_all(out.join("rootfs"))?;
    std::os::unix::fs::symlink(root.join("examples"), tree.join("examples"))?;
    let mut recipes = Vec::new();
    for e in std::fs::read_dir(root.join("recipes"))? {
        let p = e?.path();
        if p.is_dir() {
            std::os::unix::fs::symlink(
                &p,
                tree.join("recipes").join(p.file_name().unwrap_or_default()),
            )?;
            continue;
        }
        if p.extension().is_none_or(|x| x != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&p).with_context(|| p.display().to_string())?;
        let name = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let fixed = with_cookie(&text);
        std::fs::write(tree.join("recipes").join(format!("{name}.toml")), &fixed)?;
        recipes.push(name.clone());
        if name == "echo-uml" && fixed.contains("root_fs = \"squashfs\"") {
            let ext4 = fixed
                .replacen("name = \"echo-uml\"", "name = \"echo-uml-ext4\"", 1)
                .replacen("root_fs = \"squashfs\"", "root_fs = \"ext4\"", 1);
            std::fs::write(tree.join("recipes/echo-uml-ext4.toml"), ext4)?;
            recipes.push("echo-uml-ext4".into());
        }
    }
    recipes.sort();
    let sh = Shell::new()?;
    sh.change_dir(&tree);
    sh.set_var("SOURCE_DATE_EPOCH", "1700000000");
    for r in &recipes {
        let file = format!("recipes/{r}.toml");
        let no_bake: &[&str] = if r.contains("rumprun") {
            &["--no-bake"]
        } else {
            &[]
        };
        cmd!(sh, "{beambake} build {file} --out {out} {no_bake...}")
            .quiet()
            .ignore_stdout()
            .run()?;
    }
    for name in ["echo.cpio.gz", "echo.cpio.zst", "echo.iso"] {
        let dest = out.join("rootfs").join(name);
        cmd!(sh, "{beambake} rootfs examples/echo -o {dest}")
            .quiet()
            .ignore_stdout()
            .run()?;
    }
    let mut map = BTreeMap::new();
    hash_tree(&out, &out, &mut map)?;
    Ok(map)
}

/// The recipe with `cookie = COOKIE` in its `[distribution]` section (added when absent).
fn with_cookie(text: &str) -> String {
    let line = format!("cookie = \"{COOKIE}\"\n");
    match text.find("\n[distribution]\n") {
        Some(i) => {
            let at = i + "\n[distribution]\n".len();
            format!("{}{line}{}", &text[..at], &text[at..])
        }
        None => format!("{text}\n[distribution]\n{line}"),
    }
}

fn hash_tree(base: &Path, dir: &Path, map: &mut BTreeMap<String, String>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            hash_tree(base, &p, map)?;
        } else if p.extension().is_none_or(|x| x != "log") {
            let bytes = std::fs::read(&p).with_context(|| p.display().to_string())?;
            let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
            map.insert(rel, format!("{:x}", Sha256::digest(&bytes)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_goes_into_the_distribution_section_or_a_new_one() {
        let with = with_cookie("name = \"x\"\n[distribution]\nnode = \"n\"\n");
        assert_eq!(
            with,
            format!("name = \"x\"\n[distribution]\ncookie = \"{COOKIE}\"\nnode = \"n\"\n")
        );
        let without = with_cookie("name = \"x\"\n");
        assert!(without.ends_with(&format!("[distribution]\ncookie = \"{COOKIE}\"\n")));
    }
}
