//! `cargo xtask bench-rumprun`: the rumprun target's figures, in one run — the cold
//! builds (the toolchain from the snapshot, the BEAM cross-built with it: recorded when
//! they ran, read from the cache), the baked kernel and ISO sizes, boot to the first TCP
//! echo reply under TCG (median of [`RUNS`] `beambake smoke` runs of the clustering
//! recipe) and the node's `erlang:memory()` as the smoke run's rpc check reported it.
//! Prints a Markdown table.

use anyhow::{Context, Result};
use std::fs;
use std::path::Path;
use xshell::{cmd, Shell};

use crate::bench::{median, smoke_report, RUNS};

/// One smoke run of `dir`: boot to first answer (ms) and the memory check's message.
fn smoke(bb: &Path, dir: &Path) -> Result<(f64, String)> {
    let v = smoke_report(bb, dir, &[])?;
    let ms = v["boot_to_ready_ms"]
        .as_f64()
        .context("no boot_to_ready_ms in the report")?;
    let memory = v["checks"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"] == "rpc:erlang:memory()")
                .and_then(|c| c["message"].as_str())
        })
        .unwrap_or("")
        .to_string();
    Ok((ms, memory))
}

/// `{Key,Bytes}` of `erlang:memory()`'s printed list, in MB.
fn memory_mb(report: &str, key: &str) -> Option<f64> {
    let at = report.find(&format!("{{{key},"))? + key.len() + 2;
    let n: String = report[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    n.parse::<f64>().ok().map(|b| b / 1e6)
}

fn seconds(file: &Path) -> String {
    fs::read_to_string(file)
        .ok()
        .and_then(|t| t.trim().parse::<f64>().ok())
        .map_or("not recorded".into(), |s| format!("{:.1} min", s / 60.0))
}

pub fn bench_rumprun(sh: &Shell, root: &Path) -> Result<String> {
    let beam_dir = crate::otp::rumprun_beam(sh, root)?;
    let toolchain = crate::otp::rumprun_toolchain(sh, root)?;
    cmd!(sh, "cargo build --release -q -p beambake").run()?;
    let bb = root.join("target/release/beambake");
    let work = root.join("target/bench-rumprun");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let recipe = root.join("recipes/echo-rumprun-cluster.toml");
    cmd!(sh, "{bb} build -q --out {work} {recipe}").run()?;
    let dir = work.join("echo-rumprun-cluster");
    let size = |f: &str| -> Result<f64> {
        Ok(fs::metadata(dir.join(f))
            .with_context(|| dir.join(f).display().to_string())?
            .len() as f64
            / (1024.0 * 1024.0))
    };
    let mut boots = vec![];
    let mut memory = String::new();
    for _ in 0..RUNS {
        let (ms, m) = smoke(&bb, &dir)?;
        boots.push(ms);
        memory = m;
    }
    let mb = |k: &str| memory_mb(&memory, k).map_or("?".into(), |v| format!("{v:.1}"));
    Ok(format!(
        "| rumprun (echo, clustering form; median of {RUNS}) | value |\n|---|---|\n\
         | toolchain from the snapshot (cold, recorded when it ran) | {} |\n\
         | BEAM cross-built for rumprun (OTP 25 erts, cold, recorded when it ran) | {} |\n\
         | baked kernel (`echo-rumprun-cluster.hw.bin`) | {:.2} MiB |\n\
         | erlang.iso + app.iso | {:.2} + {:.2} MiB |\n\
         | boot to first TCP echo reply, TCG, 128 MiB | {:.2} s |\n\
         | `erlang:memory()` after the checks: total / processes / code / binary / ets | {} / {} / {} / {} / {} MB |\n\n\
         all rumprun boots (ms): {boots:?}\n",
        seconds(&toolchain.join("build.seconds")),
        seconds(&beam_dir.parent().context("beam dir")?.join(".beambake-build-seconds")),
        size("echo-rumprun-cluster.hw.bin")?,
        size("erlang.iso")?,
        size("app.iso")?,
        median(boots.clone()) / 1000.0,
        mb("total"),
        mb("processes"),
        mb("code"),
        mb("binary"),
        mb("ets"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_figures_are_read_from_the_report() {
        let r = "echo@10.0.121.101: erlang:memory() -> [{total,10912345},{processes,4000000},{code,3500000}]";
        assert_eq!(memory_mb(r, "total"), Some(10.912345));
        assert_eq!(memory_mb(r, "code"), Some(3.5));
        assert_eq!(memory_mb(r, "ets"), None);
    }
}
