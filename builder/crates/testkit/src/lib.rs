//! beambake's one test-support crate, for unit and integration tests alike:
//!
//! - [`paths`]: the repository root, temp dirs, tool lookup ([`which`]), copying and
//!   snapshotting trees;
//! - [`process`]: every process a test starts is guarded ([`guard`], [`output`],
//!   [`Guarded`]): killed and reaped on drop, and killed by the kernel when the test's
//!   thread ends (`PR_SET_PDEATHSIG`), so nothing a test starts outlives it; loopback
//!   ports, the VM lock, process and namespace look-ups, scripts, running as `nobody`;
//! - [`cli`]: running a command-line binary (the `beambake` CLI) through those guards;
//! - [`skip`]: skips that are seen and counted (`skip!`, recorded for `cargo xtask test`);
//! - [`golden`]: golden files (`UPDATE_GOLDEN=1` rewrites them);
//! - [`recipe`]: [`RecipeEdit`], recipes copied from `recipes/` and edited as TOML
//!   documents (comments kept), never by string surgery;
//! - [`tree`] and [`kernel`]: fixtures shared by the image writers' and the kernel's unit
//!   and integration tests.
//!
//! It depends on no beambake crate, so every crate of the workspace can take it as a
//! dev-dependency.

pub mod cli;
pub mod golden;
pub mod kernel;
pub mod paths;
pub mod process;
pub mod recipe;
pub mod skip;
pub mod tree;

pub use cli::{fails_with, stderr, stdout, Cli};
pub use paths::{
    copy_dir, copy_project, repo_root, snapshot, tempdir, tempdir_in, tempdir_named, which,
};
pub use process::{
    as_nobody, free_port, give_to_nobody, guard, is_root, netns_in_use, output, processes_matching,
    status, vm_lock, write_script, Guarded,
};
pub use recipe::{check, fields, Fields, RecipeEdit};

/// The crates tests use through the testkit.
pub use tempfile;
pub use toml_edit;
