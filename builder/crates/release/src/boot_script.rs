//! Boot scripts (`.boot`): a release's script rewritten to preload a traced set of
//! modules, the rest loading on demand.
//!
//! Owns: reading a `.boot` file (the external term format of `{script, Name, Instrs}`,
//! through `eetf`) and [`preload_only`], the one rewrite beambake makes. OTP's `init`
//! loads a script's `{primLoad, Mods}` lists until `{kernel_load_completed}`; after it,
//! in interactive mode, it skips them and the code server loads modules on first use.
//! The rewrite keeps the lists before that point, keeps in every later list only the
//! traced modules and moves `{kernel_load_completed}` after the last list: started with
//! `-mode interactive`, the node loads exactly the traced modules at boot (in parallel,
//! as embedded mode does) and any other module later, on demand.
//!
//! Must not: run anything (tracing is the target crate's `trace`), or change any
//! instruction other than `primLoad` lists and the position of `kernel_load_completed`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use eetf::{Atom, List, Term, Tuple};

#[derive(Debug, thiserror::Error)]
pub enum BootScriptError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a boot script: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// What [`preload_only`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preload {
    /// The rewritten script, as a `.boot` file's bytes.
    pub boot: Vec<u8>,
    /// Modules of the script loaded at boot (the kernel's first list included).
    pub preloaded: usize,
    /// Modules of the script left to load on demand.
    pub on_demand: usize,
}

/// Rewrites the boot script at `path` so that only the modules in `keep` (and the
/// kernel's own first list, which `init` needs before the code server runs) load at boot.
pub fn preload_only(path: &Path, keep: &BTreeSet<String>) -> Result<Preload, BootScriptError> {
    let bytes = std::fs::read(path).map_err(|source| BootScriptError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| BootScriptError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let term = Term::decode(&bytes[..]).map_err(|e| invalid(e.to_string()))?;
    let Term::Tuple(mut script) = term else {
        return Err(invalid("the term is not a tuple".into()));
    };
    let ok_head = script.elements.len() == 3 && is_atom(&script.elements[0], "script");
    let instrs = match script.elements.get_mut(2) {
        Some(Term::List(l)) if ok_head => std::mem::take(&mut l.elements),
        _ => return Err(invalid("not {script, Name, Instructions}".into())),
    };
    let (instrs, preloaded, on_demand) = rewrite(instrs, keep).map_err(invalid)?;
    script.elements[2] = Term::List(List::from(instrs));
    let mut boot = Vec::new();
    Term::Tuple(script)
        .encode(&mut boot)
        .map_err(|e| invalid(e.to_string()))?;
    return Ok(Preload {
        boot,
        preloaded,
        on_demand,
    });

    fn rewrite(
        instrs: Vec<Term>,
        keep: &BTreeSet<String>,
    ) -> Result<(Vec<Term>, usize, usize), String> {
        let done = instrs
            .iter()
            .position(|t| tag(t) == Some("kernel_load_completed") && arity(t) == 1)
            .ok_or("no {kernel_load_completed} instruction")?;
        let mut out = Vec::with_capacity(instrs.len());
        let (mut preloaded, mut on_demand) = (0, 0);
        let mut moved = Vec::new();
        for (i, t) in instrs.into_iter().enumerate() {
            let is_completion =
                i == done || (i == done + 1 && progress(&t) == Some("kernel_load_completed"));
            if is_completion {
                moved.push(t);
                continue;
            }
            match prim_load(t) {
                Ok(mods) if i < done => {
                    preloaded += mods.len();
                    out.push(prim_load_term(mods));
                }
                Ok(mods) => {
                    let total = mods.len();
                    let kept: Vec<Term> = mods
                        .into_iter()
                        .filter(|m| matches!(m, Term::Atom(a) if keep.contains(&a.name)))
                        .collect();
                    preloaded += kept.len();
                    on_demand += total - kept.len();
                    if !kept.is_empty() {
                        out.push(prim_load_term(kept));
                    }
                }
                Err(other) => out.push(other),
            }
        }
        // The modules' lists end before the first instruction that starts something.
        let at = out
            .iter()
            .rposition(|t| tag(t) == Some("primLoad"))
            .map_or(out.len(), |p| p + 1);
        out.splice(at..at, moved);
        Ok((out, preloaded, on_demand))
    }
}

/// The modules of a `{primLoad, Mods}` instruction, or the instruction back.
fn prim_load(t: Term) -> Result<Vec<Term>, Term> {
    match t {
        Term::Tuple(tu) if tu.elements.len() == 2 && is_atom(&tu.elements[0], "primLoad") => {
            match <[Term; 2]>::try_from(tu.elements) {
                Ok([_, Term::List(l)]) => Ok(l.elements),
                Ok(pair) => Err(Term::Tuple(Tuple::from(Vec::from(pair)))),
                Err(elements) => Err(Term::Tuple(Tuple::from(elements))),
            }
        }
        other => Err(other),
    }
}

fn prim_load_term(mods: Vec<Term>) -> Term {
    Term::Tuple(Tuple::from(vec![
        Term::Atom(Atom::from("primLoad")),
        Term::List(List::from(mods)),
    ]))
}

fn is_atom(t: &Term, name: &str) -> bool {
    matches!(t, Term::Atom(a) if a.name == name)
}

fn tag(t: &Term) -> Option<&str> {
    match t {
        Term::Tuple(tu) => match tu.elements.first() {
            Some(Term::Atom(a)) => Some(&a.name),
            _ => None,
        },
        _ => None,
    }
}

fn arity(t: &Term) -> usize {
    match t {
        Term::Tuple(tu) => tu.elements.len(),
        _ => 0,
    }
}

/// `Info` of `{progress, Info}`.
fn progress(t: &Term) -> Option<&str> {
    match t {
        Term::Tuple(tu) if tu.elements.len() == 2 && is_atom(&tu.elements[0], "progress") => {
            match &tu.elements[1] {
                Term::Atom(a) => Some(&a.name),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The instructions of a `.boot` file.
    fn instructions(boot: &[u8]) -> Vec<Term> {
        let Ok(Term::Tuple(script)) = Term::decode(boot) else {
            panic!("not a script")
        };
        match script.elements.into_iter().nth(2) {
            Some(Term::List(l)) => l.elements,
            other => panic!("no instruction list: {other:?}"),
        }
    }

    /// The modules of every `primLoad` list, in order.
    fn prim_loads(boot: &[u8]) -> Vec<Vec<String>> {
        instructions(boot)
            .into_iter()
            .filter_map(|t| prim_load(t).ok())
            .map(|mods| {
                mods.into_iter()
                    .filter_map(|m| match m {
                        Term::Atom(a) => Some(a.name),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    }

    /// Instruction tags in order (`primLoad`, `path`, `kernelProcess`, ...).
    fn instruction_tags(boot: &[u8]) -> Vec<String> {
        instructions(boot)
            .iter()
            .map(|t| tag(t).unwrap_or("?").to_string())
            .collect()
    }

    /// A boot script shaped like systools' (kernel list, completion, two app lists).
    fn script() -> Vec<u8> {
        let atom = |s: &str| Term::Atom(Atom::from(s));
        let tuple = |v: Vec<Term>| Term::Tuple(Tuple::from(v));
        let mods =
            |v: &[&str]| Term::List(List::from(v.iter().map(|m| atom(m)).collect::<Vec<_>>()));
        let instrs = vec![
            tuple(vec![atom("preLoaded"), mods(&["erlang", "init"])]),
            tuple(vec![atom("primLoad"), mods(&["error_handler", "code"])]),
            tuple(vec![atom("kernel_load_completed")]),
            tuple(vec![atom("progress"), atom("kernel_load_completed")]),
            tuple(vec![
                atom("primLoad"),
                mods(&["inet", "net_kernel", "gen_tcp"]),
            ]),
            tuple(vec![atom("primLoad"), mods(&["digraph", "zip"])]),
            tuple(vec![atom("progress"), atom("modules_loaded")]),
            tuple(vec![atom("kernelProcess"), atom("heart"), atom("x")]),
        ];
        let t = tuple(vec![
            atom("script"),
            tuple(vec![atom("echo"), atom("v")]),
            Term::List(List::from(instrs)),
        ]);
        let mut b = Vec::new();
        t.encode(&mut b).unwrap();
        b
    }

    #[test]
    fn keeps_the_kernel_list_prunes_the_rest_and_moves_the_completion() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("start.boot");
        std::fs::write(&p, script()).unwrap();
        let keep: BTreeSet<String> = ["inet", "gen_tcp", "code"].map(String::from).into();
        let r = preload_only(&p, &keep).unwrap();
        assert_eq!(
            prim_loads(&r.boot),
            vec![vec!["error_handler", "code"], vec!["inet", "gen_tcp"]]
        );
        assert_eq!((r.preloaded, r.on_demand), (4, 3));
        assert_eq!(
            instruction_tags(&r.boot),
            [
                "preLoaded",
                "primLoad",
                "primLoad",
                "kernel_load_completed",
                "progress",
                "progress",
                "kernelProcess"
            ]
        );
        // Same input, same bytes.
        assert_eq!(preload_only(&p, &keep).unwrap().boot, r.boot);
    }

    #[test]
    fn not_a_boot_script_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("start.boot");
        std::fs::write(&p, b"{script, x}.").unwrap();
        let e = preload_only(&p, &BTreeSet::new()).unwrap_err().to_string();
        assert!(e.contains("start.boot: not a boot script"), "{e}");
        let e = preload_only(&d.path().join("none.boot"), &BTreeSet::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.boot"), "{e}");
    }
}
