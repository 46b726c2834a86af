//! beambake: turns an Erlang/OTP release into an immutable guest image.
//!
//! The pipeline is `source` (dir, tarball, rebar3 project) -> `release` (what the release
//! is) -> `assemble` (the `rootfs` tree: release + ERTS + ELF closure + launch spec) ->
//! `image` writers -> artefacts written through `output`, described by `manifest`.
//! See ARCHITECTURE.md for the map.

pub mod assemble;
pub mod digest;
pub mod elf;
#[cfg(test)]
mod golden;
pub mod image;
pub mod launch;
pub mod manifest;
pub mod output;
pub mod pipeline;
pub mod release;
pub mod rootfs;
pub mod source;
pub mod tarball;
pub mod term;
