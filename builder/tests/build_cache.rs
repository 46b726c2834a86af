//! The build cache through the CLI: a second identical build is a verified hit with the
//! same bytes, a corrupted entry is detected and rebuilt, two builds racing on one key
//! both succeed and leave one entry, `cache ls` / `cache gc`, `--no-cache`. Each test has
//! its own cache (`BEAMBAKE_BUILD_CACHE`); the kernel comes from the user's cache.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use beambake_testkit::{output, skip_if, stderr, tempdir, RecipeEdit};
use common::{cli, echo, fresh_project, pinned_kernel, stdout_json};

/// `beambake ARGS` with the build cache in `cache`.
fn run(cache: &Path, args: &[&str]) -> Output {
    let mut c = cli().command(args);
    c.env("BEAMBAKE_BUILD_CACHE", cache);
    output(&mut c)
}

/// `beambake build RECIPE --out OUT --json [extra]`, which must succeed: its JSON.
fn build(cache: &Path, recipe: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "build",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    let o = run(cache, &args);
    assert!(o.status.success(), "build failed: {}", stderr(&o));
    stdout_json(&o)
}

/// Every file of an output dir and its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    beambake_testkit::snapshot(dir, &[])
}

/// The echo-microvm recipe with a fixed cookie (a random one is never cached) and
/// `source` as its release.
fn recipe(dir: &Path, source: &Path) -> PathBuf {
    RecipeEdit::copy("echo-microvm")
        .set("distribution.cookie", "cache-test")
        .set("release.source", source.to_str().unwrap())
        .write(dir)
}

fn cache_json(cache: &Path, args: &[&str]) -> serde_json::Value {
    let o = run(cache, args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout_json(&o)
}

/// Why the pinned microvm kernel cannot be had, if it cannot.
fn kernel_missing() -> Option<String> {
    pinned_kernel().err()
}

#[test]
fn a_second_build_is_a_verified_hit_and_a_corrupt_entry_is_rebuilt() {
    skip_if!(kernel_missing());
    let d = tempdir();
    let cache = d.path().join("cache");
    // The recipe's own source: a rebar3 project (rebar3 release runs each time; the key
    // is the release it makes).
    let (_p, project) = fresh_project();
    let recipe = recipe(d.path(), &project);
    let out = d.path().join("out");
    let dir = out.join("echo-microvm");

    let first = build(&cache, &recipe, &out, &[]);
    assert_eq!(first["cache"]["hit"], false, "{first}");
    let key = first["cache"]["key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64);
    let built = files(&dir);

    let second = build(&cache, &recipe, &out, &[]);
    assert_eq!(second["cache"]["hit"], true, "{second}");
    assert_eq!(second["cache"]["key"], key.as_str());
    assert_eq!(
        second["cache"]["verified"].as_u64().unwrap(),
        built.len() as u64 - 1,
        "every file but the cookie, which is written by each build"
    );
    assert_eq!(second["cache"]["hashed"], 0, "nothing changed since stored");
    assert!(!cache.join(&key).join("files/cookie").exists());
    assert_eq!(files(&dir), built, "a hit installs the same bytes");
    assert_eq!(second["sha256"], first["sha256"]);

    // One byte of the cached image changed: detected, the entry removed, rebuilt.
    let cached = cache.join(&key).join("files/echo-microvm.cpio.zst");
    let mut bytes = fs::read(&cached).unwrap();
    bytes[100] ^= 1;
    let mut perm = fs::metadata(&cached).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    fs::set_permissions(&cached, perm).unwrap();
    fs::write(&cached, &bytes).unwrap();
    let third = build(&cache, &recipe, &out, &[]);
    assert_eq!(third["cache"]["hit"], false, "{third}");
    let rejected = third["cache"]["rejected"].as_str().unwrap();
    assert!(rejected.contains("echo-microvm.cpio.zst"), "{rejected}");
    assert_eq!(files(&dir), built, "the rebuilt output is right");
    let fourth = build(&cache, &recipe, &out, &[]);
    assert_eq!(fourth["cache"]["hit"], true, "the rebuild was stored again");

    // A stored file written in place (same bytes, so the entry is still right): its
    // stamp changed, so it is hashed, checked, and the hit stands.
    let kernel = cache.join(&key).join("files/vmlinuz");
    let mut perm = fs::metadata(&kernel).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    fs::set_permissions(&kernel, perm).unwrap();
    fs::write(&kernel, fs::read(&kernel).unwrap()).unwrap();
    let fifth = build(&cache, &recipe, &out, &[]);
    assert_eq!(fifth["cache"]["hit"], true, "{fifth}");
    assert_eq!(fifth["cache"]["hashed"], 1, "{fifth}");
    assert_eq!(files(&dir), built);

    // --no-cache neither reads nor writes.
    let other = tempdir();
    let none = build(other.path(), &recipe, &out, &["--no-cache"]);
    assert!(none["cache"].is_null(), "{none}");
    assert!(!other.path().join("cache").exists());
    assert_eq!(fs::read_dir(other.path()).unwrap().count(), 0);
    assert_eq!(files(&dir), built);
}

#[test]
fn two_builds_racing_on_one_key_both_succeed_and_leave_one_entry() {
    skip_if!(kernel_missing());
    let d = tempdir();
    let cache = d.path().join("cache");
    let recipe = recipe(d.path(), &echo().release);
    let outs = [d.path().join("out1"), d.path().join("out2")];
    let mut jobs: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            let mut c = cli().command([
                "build",
                recipe.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--json",
            ]);
            c.env("BEAMBAKE_BUILD_CACHE", &cache);
            beambake_testkit::Guarded::spawn(c, d.path().join(format!("log{i}")))
        })
        .collect();
    for j in &mut jobs {
        assert!(
            j.wait().success(),
            "a racing build failed: {}",
            j.log_text()
        );
    }
    let [a, b] = [&outs[0], &outs[1]].map(|o| files(&o.join("echo-microvm")));
    assert!(!a.is_empty());
    assert_eq!(a, b, "both builds wrote the same bytes");

    let ls = cache_json(&cache, &["cache", "ls", "--json"]);
    let entries = ls["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{ls}");
    assert_eq!(entries[0]["name"], "echo-microvm");
    let leftovers: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".digests.json")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The entry is whole: a third build is a hit that verifies every file.
    let third = build(&cache, &recipe, &outs[0], &[]);
    assert_eq!(third["cache"]["hit"], true, "{third}");
    assert_eq!(
        third["cache"]["verified"].as_u64().unwrap(),
        a.len() as u64 - 1,
        "all but the cookie"
    );

    let o = run(&cache, &["cache", "ls"]);
    let text = beambake_testkit::stdout(&o);
    assert!(text.contains(&cache.display().to_string()), "{text}");
    assert!(text.contains("echo-microvm"), "{text}");
    let gc = cache_json(&cache, &["cache", "gc", "--json"]);
    assert!(
        gc["removed"].as_array().unwrap().is_empty(),
        "fresh entries stay: {gc}"
    );
    let gc = cache_json(&cache, &["cache", "gc", "--max-size", "0", "--json"]);
    assert_eq!(gc["removed"].as_array().unwrap().len(), 1, "{gc}");
    let ls = cache_json(&cache, &["cache", "ls", "--json"]);
    assert!(ls["entries"].as_array().unwrap().is_empty(), "{ls}");
}

/// A cookie drawn at random is appended to the cached initramfs by each build: a second
/// build is a hit with a new cookie, and no cookie is ever in the cache. (The smoke tests
/// of the echo-microvm recipe boot such images and pass the distribution check.)
#[test]
fn a_random_cookie_is_per_build_and_never_cached() {
    skip_if!(kernel_missing());
    let d = tempdir();
    let cache = d.path().join("cache");
    let recipe = RecipeEdit::copy("echo-microvm")
        .set("release.source", echo().release.to_str().unwrap())
        .write(d.path());
    let out = d.path().join("out");
    let dir = out.join("echo-microvm");
    let image_of = |json: &serde_json::Value| {
        let cookie = fs::read_to_string(dir.join("cookie")).unwrap();
        let image = fs::read(dir.join("echo-microvm.cpio.zst")).unwrap();
        let sha = beambake_images::digest::sha256_bytes(&image);
        assert_eq!(json["artefacts"][0]["sha256"], sha.as_str(), "{json}");
        let manifest = fs::read_to_string(dir.join("manifest.json")).unwrap();
        assert_eq!(
            manifest.matches(&sha).count(),
            1,
            "the manifest has the image's sha256"
        );
        (cookie, image)
    };

    let first = build(&cache, &recipe, &out, &[]);
    assert_eq!(first["cache"]["hit"], false, "{first}");
    let (cookie1, image1) = image_of(&first);
    let second = build(&cache, &recipe, &out, &[]);
    assert_eq!(second["cache"]["hit"], true, "{second}");
    let (cookie2, image2) = image_of(&second);
    assert_eq!(cookie1.len(), 32);
    assert_ne!(cookie1, cookie2, "each build draws its own");
    assert_ne!(image1, image2);

    let key = second["cache"]["key"].as_str().unwrap();
    let cached = fs::read(cache.join(key).join("files/echo-microvm.cpio.zst")).unwrap();
    assert!(
        image2.starts_with(&cached),
        "the cached archive, then the cookie's"
    );
    let tail = String::from_utf8_lossy(&image2[cached.len()..]);
    assert!(tail.contains("etc/beambake/cookie.args"), "{tail}");
    assert!(tail.contains(&format!("-setcookie {cookie2}")), "{tail}");
    for (path, bytes) in beambake_testkit::snapshot(&cache, &[]) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&cookie1) && !text.contains(&cookie2),
            "{} holds a cookie",
            path.display()
        );
    }
}
