//! `cargo xtask ci-example`: runs `examples/ci/pipeline.sh` — the steps the GitHub
//! Actions workflow and the GitLab CI file in `examples/ci/` run — on this machine, and
//! checks what a CI would keep: the image directory with its manifest, `build.json`,
//! `smoke.json` and `junit.xml`. It also reads both CI files with a YAML parser and
//! checks that they run that script and keep those artefacts.
//!
//! Must not: repeat the pipeline's steps (the script is the one copy).

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};
use yaml_rust2::{Yaml, YamlLoader};

const SCRIPT: &str = "examples/ci/pipeline.sh";
const ARTEFACTS: &str = "ci-artifacts";

/// Runs the pipeline for `recipe` with `beambake` into `out`, then checks its artefacts.
pub fn run(sh: &Shell, root: &Path, beambake: &Path, recipe: &str, out: &Path) -> Result<()> {
    check_ci_files(root)?;
    let script = root.join(SCRIPT);
    cmd!(sh, "bash {script} {recipe}")
        .env("BEAMBAKE", beambake)
        .env("BEAMBAKE_CI_OUT", out)
        .run()
        .context("the CI example pipeline failed")?;
    check_artefacts(out)
}

/// What a CI keeps is there and says the smoke passed.
pub fn check_artefacts(out: &Path) -> Result<()> {
    let read = |name: &str| {
        std::fs::read_to_string(out.join(name)).with_context(|| format!("{}/{name}", out.display()))
    };
    let smoke: serde_json::Value = serde_json::from_str(&read("smoke.json")?)
        .with_context(|| format!("{}/smoke.json is not JSON", out.display()))?;
    ensure!(
        smoke["passed"] == serde_json::Value::Bool(true),
        "smoke.json does not say passed: {smoke}"
    );
    let _: serde_json::Value = serde_json::from_str(&read("build.json")?)
        .with_context(|| format!("{}/build.json is not JSON", out.display()))?;
    let junit = read("junit.xml")?;
    ensure!(
        junit.contains("<testcase") && !junit.contains("<failure"),
        "junit.xml has no passing test cases:\n{junit}"
    );
    let manifests: Vec<_> = std::fs::read_dir(out.join("images"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("manifest.json"))
        .filter(|p| p.is_file())
        .collect();
    ensure!(
        !manifests.is_empty(),
        "no image manifest under {}/images",
        out.display()
    );
    println!(
        "ci-example: image, manifest, build.json, smoke.json and junit.xml in {}",
        out.display()
    );
    Ok(())
}

fn load(root: &Path, name: &str) -> Result<Yaml> {
    let path = root.join("examples/ci").join(name);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut docs = YamlLoader::load_from_str(&text)
        .with_context(|| format!("{}: not YAML", path.display()))?;
    ensure!(
        docs.len() == 1,
        "{}: one YAML document expected",
        path.display()
    );
    Ok(docs.remove(0))
}

/// Every string anywhere in `y`.
fn strings(y: &Yaml, acc: &mut Vec<String>) {
    match y {
        Yaml::String(s) => acc.push(s.clone()),
        Yaml::Array(a) => a.iter().for_each(|v| strings(v, acc)),
        Yaml::Hash(h) => h.iter().for_each(|(k, v)| {
            strings(k, acc);
            strings(v, acc);
        }),
        _ => {}
    }
}

/// Both CI files parse, run the pipeline script and keep its artefacts (GitLab: with
/// the JUnit report).
pub fn check_ci_files(root: &Path) -> Result<()> {
    for (name, must) in [
        ("github-actions.yml", vec!["actions/upload-artifact@v4"]),
        ("gitlab-ci.yml", vec![]),
    ] {
        let y = load(root, name)?;
        let mut all = Vec::new();
        strings(&y, &mut all);
        ensure!(
            all.iter().any(|s| s.contains(SCRIPT)),
            "examples/ci/{name} does not run {SCRIPT}"
        );
        ensure!(
            all.iter().any(|s| s.starts_with(ARTEFACTS)),
            "examples/ci/{name} keeps no {ARTEFACTS}/"
        );
        for m in must {
            ensure!(all.iter().any(|s| s == m), "examples/ci/{name}: no {m}");
        }
    }
    let gl = load(root, "gitlab-ci.yml")?;
    let junit = &gl["image-smoke"]["artifacts"]["reports"]["junit"];
    if junit.as_str() != Some("ci-artifacts/junit.xml") {
        bail!("examples/ci/gitlab-ci.yml: artifacts.reports.junit is not ci-artifacts/junit.xml");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ci_files_run_the_pipeline_and_keep_its_artefacts() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check_ci_files(root).unwrap();
    }

    #[test]
    fn a_failed_smoke_is_not_taken_for_a_pass() {
        let d = std::env::temp_dir().join(format!("ci-example-test-{}", std::process::id()));
        std::fs::create_dir_all(d.join("images/x")).unwrap();
        std::fs::write(d.join("images/x/manifest.json"), "{}").unwrap();
        std::fs::write(d.join("build.json"), "{}").unwrap();
        std::fs::write(d.join("smoke.json"), r#"{"passed": false}"#).unwrap();
        std::fs::write(d.join("junit.xml"), "<testcase name='a'/>").unwrap();
        assert!(check_artefacts(&d).is_err());
        std::fs::write(d.join("smoke.json"), r#"{"passed": true}"#).unwrap();
        check_artefacts(&d).unwrap();
        std::fs::write(
            d.join("junit.xml"),
            "<testcase name='a'><failure/></testcase>",
        )
        .unwrap();
        assert!(check_artefacts(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
