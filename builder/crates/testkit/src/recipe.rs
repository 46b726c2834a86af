//! Recipes for tests, edited as TOML documents (`toml_edit`: comments and layout kept),
//! never by string surgery:
//!
//! ```no_run
//! use beambake_testkit::{check, RecipeEdit};
//! # let dir = std::path::Path::new("/tmp");
//! let recipe = RecipeEdit::copy("echo-microvm")   // recipes/echo-microvm.toml
//!     .set("vm.memory_mib", 512)
//!     .set("launch.extra_args", ["-s", "init", "stop"])
//!     .remove("distribution")
//!     .add_check(check("rpc").set("call", "erlang:node()").set("expect", "'echo@h'"))
//!     .write(dir);                                  // dir/echo-microvm.toml
//! ```
//!
//! A key is a dotted path: `table.key`, `table.sub.key`, and `array.N.key` for entry N
//! (from 0) of an array of tables (`check.1.port`). A copy's relative paths
//! ([`PATH_KEYS`]) are made absolute, so it still names the repository's files wherever
//! it is written; paths a test sets are written as given.

use std::path::{Component, Path, PathBuf};

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

use crate::paths::repo_root;

/// The recipe keys that name host paths relative to the recipe's directory (the
/// `relative to the recipe` fields of beambake's recipe schema): `table.key`, or
/// `array.*.key` for that key in every entry of an array of tables.
pub const PATH_KEYS: &[&str] = &[
    "release.source",
    "release.otp_root",
    "release.erts_from",
    "kernel.pin",
    "kernel.path",
    "kernel.modules",
    "data.path",
    "hostfs.*.host",
    "disk.*.path",
    "check.*.ca",
    "rumprun.beam",
    "rumprun.source",
    "osv.source",
];

/// A value a recipe key can be set to: strings, integers, booleans, paths (as strings),
/// arrays of those, or any `toml_edit::Value`.
pub trait IntoValue {
    fn into_value(self) -> Value;
}

macro_rules! into_value_via {
    ($conv:ty => $($t:ty),*) => {$(
        impl IntoValue for $t {
            fn into_value(self) -> Value {
                Value::from(<$conv>::from(self))
            }
        }
    )*};
}
into_value_via!(i64 => i8, i16, i32, i64, u8, u16, u32);
into_value_via!(String => &str, String, &String);
into_value_via!(bool => bool);

impl IntoValue for Value {
    fn into_value(self) -> Value {
        self
    }
}

impl IntoValue for u64 {
    fn into_value(self) -> Value {
        Value::from(i64::try_from(self).expect("a TOML integer is an i64"))
    }
}

impl IntoValue for &Path {
    fn into_value(self) -> Value {
        Value::from(path_str(self))
    }
}

impl IntoValue for PathBuf {
    fn into_value(self) -> Value {
        self.as_path().into_value()
    }
}

impl IntoValue for &PathBuf {
    fn into_value(self) -> Value {
        self.as_path().into_value()
    }
}

impl<T: IntoValue> IntoValue for Vec<T> {
    fn into_value(self) -> Value {
        Value::Array(self.into_iter().map(IntoValue::into_value).collect())
    }
}

impl<T: IntoValue, const N: usize> IntoValue for [T; N] {
    fn into_value(self) -> Value {
        Value::Array(self.into_iter().map(IntoValue::into_value).collect())
    }
}

impl<T: IntoValue + Clone> IntoValue for &[T] {
    fn into_value(self) -> Value {
        self.to_vec().into_value()
    }
}

fn path_str(p: &Path) -> String {
    p.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
        .to_string()
}

/// The fields of a new table (an entry of an array of tables: a `[[check]]`, a
/// `[[disk]]`), in the order they are set.
#[derive(Debug, Clone, Default)]
pub struct Fields(Table);

/// No fields yet.
pub fn fields() -> Fields {
    Fields::default()
}

/// A `[[check]]` of `type = KIND`.
pub fn check(kind: &str) -> Fields {
    fields().set("type", kind)
}

impl Fields {
    pub fn set(mut self, key: &str, value: impl IntoValue) -> Fields {
        self.0.insert(key, Item::Value(value.into_value()));
        self
    }
}

/// A recipe being edited: written as `NAME.toml` by [`RecipeEdit::write`] (NAME: the file
/// it was read from, or the name it was given).
#[derive(Debug, Clone)]
pub struct RecipeEdit {
    name: String,
    doc: DocumentMut,
}

impl RecipeEdit {
    /// `recipes/NAME.toml` of the repository, its relative paths made absolute.
    pub fn copy(name: &str) -> RecipeEdit {
        RecipeEdit::load(&repo_root().join("recipes").join(format!("{name}.toml")))
    }

    /// The recipe file `path`, its paths relative to its directory made absolute.
    pub fn load(path: &Path) -> RecipeEdit {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path
            .file_stem()
            .unwrap_or_else(|| panic!("{}: no file name", path.display()))
            .to_string_lossy()
            .into_owned();
        let mut r = RecipeEdit::parse(&name, &text);
        let dir = path.parent().unwrap_or(Path::new("."));
        for pattern in PATH_KEYS {
            r.rewrite_paths(pattern, &|p| absolute(dir, p));
        }
        r
    }

    /// An empty recipe, to be built key by key and written as `NAME.toml`.
    pub fn new(name: &str) -> RecipeEdit {
        RecipeEdit::parse(name, "")
    }

    /// A recipe's text (paths kept as written), to be written as `NAME.toml`.
    pub fn parse(name: &str, text: &str) -> RecipeEdit {
        let doc = text
            .parse::<DocumentMut>()
            .unwrap_or_else(|e| panic!("{name}: not TOML: {e}"));
        RecipeEdit {
            name: name.to_string(),
            doc,
        }
    }

    /// Sets `key` to `value`, making the tables on the way when missing. A value that is
    /// replaced keeps its comment.
    pub fn set(mut self, key: &str, value: impl IntoValue) -> RecipeEdit {
        let (parents, last) = split(key);
        let t = table_mut(self.doc.as_table_mut(), &parents, true, key);
        let mut value = value.into_value();
        match t.get_mut(last) {
            Some(Item::Value(old)) => {
                *value.decor_mut() = old.decor().clone();
                *old = value;
            }
            Some(other) => panic!("{key} is {}, not a value", other.type_name()),
            None => {
                t.insert(last, Item::Value(value));
            }
        }
        self
    }

    /// Removes `key`: a value, a table, a whole array of tables, or one entry of it
    /// (`check.2`). Panics if it is not there.
    pub fn remove(mut self, key: &str) -> RecipeEdit {
        let (parents, last) = split(key);
        if let (Ok(i), Some((array, up))) = (last.parse::<usize>(), parents.split_last()) {
            let entries = array_mut(self.doc.as_table_mut(), up, array, false, key);
            assert!(
                i < entries.len(),
                "{key}: {array} has {} entries",
                entries.len()
            );
            entries.remove(i);
        } else {
            let t = table_mut(self.doc.as_table_mut(), &parents, false, key);
            assert!(t.remove(last).is_some(), "{key}: not in the recipe");
        }
        self
    }

    /// Appends a `[[check]]`.
    pub fn add_check(self, check: Fields) -> RecipeEdit {
        self.push("check", check)
    }

    /// Appends an entry to the array of tables `array` (`disk`, `hostfs`, `check`; a
    /// dotted path like any key), making it when missing.
    pub fn push(mut self, array: &str, entry: Fields) -> RecipeEdit {
        let (parents, last) = split(array);
        array_mut(self.doc.as_table_mut(), &parents, last, true, array).push(entry.0);
        self
    }

    /// Removes every entry of the array of tables `array` (new ones can be pushed).
    pub fn clear(mut self, array: &str) -> RecipeEdit {
        let (parents, last) = split(array);
        array_mut(self.doc.as_table_mut(), &parents, last, false, array).clear();
        self
    }

    /// The recipe's name on disk: `NAME.toml`.
    pub fn file_name(&self) -> String {
        format!("{}.toml", self.name)
    }

    /// The recipe as it will be written.
    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    /// Writes the recipe as `dir/NAME.toml` (replacing it) and returns that path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join(self.file_name());
        std::fs::write(&p, self.text()).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        p
    }

    /// Applies `f` to each relative string value at `pattern` (a [`PATH_KEYS`] entry).
    fn rewrite_paths(&mut self, pattern: &str, f: &dyn Fn(&str) -> String) {
        let parts: Vec<&str> = pattern.split('.').collect();
        let root = self.doc.as_table_mut();
        let mut tables: Vec<&mut Table> = vec![root];
        for p in &parts[..parts.len() - 1] {
            let mut next = vec![];
            for t in tables {
                if *p == "*" {
                    // The entries of the array before it are there already.
                    next.push(t);
                    continue;
                }
                match t.get_mut(p) {
                    Some(Item::Table(sub)) => next.push(sub),
                    Some(Item::ArrayOfTables(a)) => next.extend(a.iter_mut()),
                    _ => {}
                }
            }
            tables = next;
        }
        let last = parts[parts.len() - 1];
        for t in tables {
            if let Some(Item::Value(v)) = t.get_mut(last) {
                if let Some(s) = v.as_str().filter(|s| Path::new(s).is_relative()) {
                    let mut new = Value::from(f(s));
                    *new.decor_mut() = v.decor().clone();
                    *v = new;
                }
            }
        }
    }
}

fn split(key: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    assert!(
        !last.is_empty() && parts.iter().all(|p| !p.is_empty()),
        "{key:?}: not a dotted key"
    );
    (parts, last)
}

/// The table at `parts` (`N` after an array of tables picks its entry), made when missing
/// if `create`.
fn table_mut<'a>(mut t: &'a mut Table, parts: &[&str], create: bool, key: &str) -> &'a mut Table {
    let mut i = 0;
    while i < parts.len() {
        let p = parts[i];
        if create && !t.contains_key(p) {
            t.insert(p, toml_edit::table());
        }
        t = match t.get_mut(p) {
            Some(Item::Table(sub)) => sub,
            Some(Item::ArrayOfTables(a)) => {
                i += 1;
                let Some(n) = parts.get(i).and_then(|s| s.parse::<usize>().ok()) else {
                    panic!("{key}: {p} is an array of tables: name an entry ({p}.N)");
                };
                let len = a.len();
                a.get_mut(n)
                    .unwrap_or_else(|| panic!("{key}: {p} has {len} entries"))
            }
            Some(other) => panic!("{key}: {p} is {}, not a table", other.type_name()),
            None => panic!("{key}: no {p} in the recipe"),
        };
        i += 1;
    }
    t
}

/// The array of tables `name` in the table at `parents`, made when missing if `create`.
fn array_mut<'a>(
    root: &'a mut Table,
    parents: &[&str],
    name: &str,
    create: bool,
    key: &str,
) -> &'a mut ArrayOfTables {
    let t = table_mut(root, parents, create, key);
    if create && !t.contains_key(name) {
        t.insert(name, Item::ArrayOfTables(ArrayOfTables::new()));
    }
    match t.get_mut(name) {
        Some(Item::ArrayOfTables(a)) => a,
        Some(other) => panic!("{key} is {}, not an array of tables", other.type_name()),
        None => panic!("{key}: not in the recipe"),
    }
}

/// `dir/p` without `.` and `..` components.
fn absolute(dir: &Path, p: &str) -> String {
    let mut out = PathBuf::new();
    for c in dir.join(p).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    path_str(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(r: &RecipeEdit) -> DocumentMut {
        r.text().parse().unwrap()
    }

    #[test]
    fn a_copy_names_the_repositorys_files_and_keeps_its_comments() {
        let root = repo_root();
        let r = RecipeEdit::copy("echo-uml");
        let d = doc(&r);
        assert_eq!(
            d["release"]["source"].as_str(),
            root.join("examples/echo").to_str()
        );
        assert_eq!(
            d["hostfs"][0]["host"].as_str(),
            root.join("recipes/uml-shared").to_str()
        );
        // Guest paths are not host paths.
        assert_eq!(d["data"]["mount"].as_str(), Some("/data"));
        let text = r.text();
        assert!(text.contains("# relative to this file"), "{text}");
        assert!(
            text.contains("count = 3                       # three VMs"),
            "{text}"
        );
        assert_eq!(r.file_name(), "echo-uml.toml");
    }

    /// No relative path of any recipe is left pointing at nothing: each string value that
    /// names a file beside the recipes is one of PATH_KEYS, made absolute.
    #[test]
    fn every_recipe_copy_has_only_absolute_host_paths() {
        let recipes = repo_root().join("recipes");
        let mut n = 0;
        for e in std::fs::read_dir(&recipes).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            n += 1;
            let r = RecipeEdit::load(&p);
            fn strings(item: &Item, out: &mut Vec<String>) {
                match item {
                    Item::Value(v) => {
                        if let Some(s) = v.as_str() {
                            out.push(s.to_string());
                        }
                    }
                    Item::Table(t) => t.iter().for_each(|(_, i)| strings(i, out)),
                    Item::ArrayOfTables(a) => a
                        .iter()
                        .for_each(|t| t.iter().for_each(|(_, i)| strings(i, out))),
                    Item::None => {}
                }
            }
            let mut all = vec![];
            strings(doc(&r).as_item(), &mut all);
            for s in all {
                assert!(
                    Path::new(&s).is_absolute() || !recipes.join(&s).exists(),
                    "{}: {s:?} is still relative",
                    p.display()
                );
            }
        }
        assert!(n >= 5, "{n} recipes");
    }

    #[test]
    fn set_remove_push_and_clear() {
        let r = RecipeEdit::copy("echo-microvm")
            .set("vm.memory_mib", 512)
            .set("vm.accel", "tcg")
            .set("launch.extra_args", ["-s", "init", "stop"])
            .set("kernel.extra_modules", vec!["no_such_module"])
            .set("smoke.check_timeout_s", 3u64)
            .set("distribution.cookie", "s3cret")
            .set("check.1.port", 9999)
            .set("data.size_mib", 8)
            .remove("vm.cpus")
            .remove("check.0")
            .add_check(check("rpc").set("call", "erlang:node()").set("expect", "x"))
            .push(
                "disk",
                fields()
                    .set("path", Path::new("/x.iso"))
                    .set("mount", "/mnt"),
            );
        let d = doc(&r);
        assert_eq!(d["vm"]["memory_mib"].as_integer(), Some(512));
        assert!(d["vm"].get("cpus").is_none());
        let text = r.text();
        // The replaced value kept its comment.
        assert!(
            text.contains("accel = \"tcg\"                  # KVM only"),
            "{text}"
        );
        let args: Vec<_> = d["launch"]["extra_args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(args, ["-s", "init", "stop"]);
        assert_eq!(d["distribution"]["cookie"].as_str(), Some("s3cret"));
        assert_eq!(d["distribution"]["node"].as_str(), Some("echo"));
        let checks = d["check"].as_array_of_tables().unwrap();
        let types: Vec<_> = checks.iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["http", "distribution", "rpc"]);
        assert!(checks.get(1).unwrap().get("port").is_none());
        // check.1 was http before check.0 went.
        assert_eq!(checks.get(0).unwrap()["port"].as_integer(), Some(9999));
        assert_eq!(d["data"]["size_mib"].as_integer(), Some(8));
        assert_eq!(d["disk"][0]["mount"].as_str(), Some("/mnt"));
        // The new check stays a [[check]] before [smoke] in the text.
        let (rpc, smoke) = (
            text.find("type = \"rpc\"").unwrap(),
            text.find("[smoke]").unwrap(),
        );
        assert!(rpc < smoke, "{text}");

        let none = r.clone().clear("check");
        assert!(doc(&none).get("check").is_none(), "{}", none.text());
        let one = none.add_check(check("tcp_echo").set("port", 8080));
        assert_eq!(doc(&one)["check"][0]["port"].as_integer(), Some(8080));
        assert!(doc(&r.remove("distribution")).get("distribution").is_none());
    }

    #[test]
    fn mistakes_are_named() {
        let r = RecipeEdit::copy("echo-microvm");
        let msg = |f: Box<dyn FnOnce() + std::panic::UnwindSafe>| {
            std::panic::catch_unwind(f)
                .unwrap_err()
                .downcast_ref::<String>()
                .cloned()
                .unwrap()
        };
        let r1 = r.clone();
        assert!(msg(Box::new(move || drop(r1.remove("vm.nope"))))
            .contains("vm.nope: not in the recipe"));
        let r2 = r.clone();
        assert!(msg(Box::new(move || drop(r2.set("check.port", 1)))).contains("name an entry"));
        let r3 = r.clone();
        assert!(
            msg(Box::new(move || drop(r3.set("check.9.port", 1)))).contains("check has 3 entries")
        );
        let r4 = r;
        assert!(msg(Box::new(move || drop(r4.set("name.x", 1))))
            .contains("name.x: name is string, not a table"));
    }

    #[test]
    fn writes_name_dot_toml_and_parses_texts() {
        let d = tempfile::tempdir().unwrap();
        let r = RecipeEdit::parse("mine", "name = \"mine\"\n\n[release]\nsource = \"rel\"\n");
        let p = r.clone().set("release.source", d.path()).write(d.path());
        assert_eq!(p, d.path().join("mine.toml"));
        let back = RecipeEdit::load(&p);
        assert_eq!(doc(&back)["release"]["source"].as_str(), d.path().to_str());
        // parse keeps relative paths; load resolves them against the file's dir.
        assert_eq!(doc(&r)["release"]["source"].as_str(), Some("rel"));
        let p = r.write(d.path());
        assert_eq!(
            doc(&RecipeEdit::load(&p))["release"]["source"].as_str(),
            d.path().join("rel").to_str()
        );
        assert_eq!(absolute(Path::new("/a/b"), "../c/./d"), "/a/c/d");
    }

    #[test]
    fn a_recipe_built_key_by_key() {
        let r = RecipeEdit::new("mine")
            .set("name", "mine")
            .set("release.source", "/rel")
            .set("network.mode", "user")
            .add_check(check("tcp_echo").set("port", 8080));
        assert_eq!(
            r.text(),
            "name = \"mine\"\n\n[release]\nsource = \"/rel\"\n\n[network]\nmode = \"user\"\n\n\
             [[check]]\ntype = \"tcp_echo\"\nport = 8080\n"
        );
    }
}
