//! Guests at run time: the boot plan and its hypervisors ([`boot`]: qemu, User Mode
//! Linux, the KVM/TCG choice, the one guest-lifecycle type), namespaces and taps
//! ([`net`]), the sandbox process ([`sandbox`]), the checks ([`smoke`]), rumprun's
//! runtime configuration ([`rumprun`]) and the online upload of a tree into a writable
//! OSv image ([`osv_upload`]: a VM that receives files, not a build of an image format).
//!
//! Must not: build images (it reads what a target wrote: the plan and its files).

pub mod boot;
pub mod net;
pub mod osv_upload;
pub mod port;
pub mod rumprun;
pub mod sandbox;
pub mod smoke;
pub mod snapshot;
