//! beambake's release side: the input forms ([`source`]: dir, tarball through the safe
//! extractor [`tarball`], rebar3 project), Erlang terms ([`term`]), the release model
//! ([`release`]), how a release is started ([`launch`]), the ELF closure ([`elf`]),
//! assembly into an image tree ([`assemble`]) and the build [`manifest`]. Reusable by
//! anything that reads releases (the CLI, the rebar3 plugin's helpers).
//!
//! Must not: boot, touch networks, or know targets and recipes.

pub mod assemble;
pub mod boot_script;
pub mod elf;
pub mod launch;
pub mod manifest;
pub mod release;
pub mod source;
pub mod tarball;
pub mod term;
