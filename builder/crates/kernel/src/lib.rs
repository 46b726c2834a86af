//! Kernels: Debian kernel packages pinned in `images/` ([`kernel`]) and the kernels
//! beambake builds from source ([`uml_kernel`], [`osv_kernel`]; what they share:
//! [`build_cache`]), all cached under `~/.cache/beambake`.
//!
//! Must not: boot anything.

pub mod build_cache;
pub mod kernel;
pub mod osv_kernel;
pub mod uml_kernel;
