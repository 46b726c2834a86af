//! beambake: turns an Erlang/OTP release into an immutable guest image.
//!
//! This crate is the CLI's library: the target registry ([`targets`]), recipe-level
//! operations ([`run`]), `beambake doctor` ([`doctor`]) and the embedded guest init
//! ([`INIT`]). The work itself lives in the crates under `builder/crates/` (see
//! ARCHITECTURE.md); their modules are re-exported here under the names the CLI, xtask
//! and the integration tests use.

pub mod ci;
pub mod doctor;
pub mod run;
pub mod targets;

pub use beambake_images::{digest, host, image, output, rootfs};
pub use beambake_kernel::{
    build_cache, kernel, minimal_kernel, osv_kernel, rumprun_toolchain, source_kernel, uml_kernel,
};
pub use beambake_libvirt as libvirt;
pub use beambake_patch::{patch, patchset};
pub use beambake_recipe as recipe;
pub use beambake_release::{
    assemble, boot_script, elf, launch, manifest, release, source, tarball, term,
};
pub use beambake_target::{exit, pipeline};
pub use beambake_vm::port::vm as boot_port;
pub use beambake_vm::{boot, net, osv_upload, port, rumprun, sandbox, smoke, snapshot};

/// beambake's init (static), built from the workspace's `init` crate by build.rs.
pub const INIT: &[u8] = include_bytes!(env!("BEAMBAKE_INIT_BIN"));

/// The targets, as they were reachable before the split (tests and xtask).
pub mod target {
    pub use beambake_target::*;
    pub use beambake_target_microvm as microvm;
    pub use beambake_target_rumprun as rumprun;
    pub use beambake_target_uml as uml;
}
