//! `beambake port`: a VM (or a libvirt connection) driven from Erlang through a port
//! program. [`codec`] is the wire (`{packet, 4}` + external term format).
//!
//! Must not: build images.

pub mod codec;
pub mod vm;
