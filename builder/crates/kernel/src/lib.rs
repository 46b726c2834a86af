//! Kernels: Debian kernel packages pinned in `images/` ([`kernel`]) and the kernels
//! beambake builds from source — Linux from the pinned `linux-source-6.1`, one
//! [`source_kernel::Spec`] each ([`uml_kernel`], [`minimal_kernel`]), and OSv
//! ([`osv_kernel`]), and the rumprun toolchain ([`rumprun_toolchain`]); what they share: [`build_cache`] — all cached under
//! `~/.cache/beambake`.
//!
//! Must not: boot anything.

pub mod build_cache;
pub mod kernel;
pub mod minimal_kernel;
pub mod osv_kernel;
pub mod rumprun_toolchain;
pub mod source_kernel;
pub mod uml_kernel;
