//! beambake: turns an Erlang/OTP release into an immutable guest image.
//!
//! The pipeline is `source` (dir, tarball, rebar3 project) -> `release` (what the release
//! is) -> `assemble` (the `rootfs` tree: release + ERTS + ELF closure + launch spec) ->
//! `image` writers -> artefacts written through `output`, described by `manifest`.
//! See ARCHITECTURE.md for the map.

pub mod assemble;
pub mod boot;
pub mod digest;
pub mod doctor;
pub mod elf;
#[cfg(test)]
mod golden;
pub mod host;
pub mod image;
pub mod kernel;
pub mod launch;
pub mod manifest;
pub mod net;
pub mod output;
pub mod patch;
pub mod patchset;
pub mod pipeline;
pub mod recipe;
pub mod release;
pub mod rootfs;
pub mod rumprun;
pub mod run;
pub mod sandbox;
pub mod smoke;
pub mod source;
pub mod tarball;
pub mod target;
pub mod term;
#[cfg(test)]
pub(crate) mod test_skip;
pub mod uml_kernel;
