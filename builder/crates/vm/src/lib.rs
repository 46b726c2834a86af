//! Guests at run time: the boot plan and its hypervisors ([`boot`]: qemu, User Mode
//! Linux, the KVM/TCG choice, the one guest-lifecycle type), namespaces and taps
//! ([`net`]), the sandbox process ([`sandbox`]), the checks ([`smoke`]) and rumprun's
//! runtime configuration ([`rumprun`]).
//!
//! Must not: build images (it reads what a target wrote: the plan and its files).

pub mod boot;
pub mod net;
pub mod rumprun;
pub mod sandbox;
pub mod smoke;
