//! Kernels: Debian kernel packages pinned in `images/` ([`kernel`]) and the kernels
//! beambake builds from source ([`uml_kernel`]), all cached under `~/.cache/beambake`.
//!
//! Must not: boot anything.

pub mod kernel;
pub mod uml_kernel;
