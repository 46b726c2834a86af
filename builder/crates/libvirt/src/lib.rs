//! libvirt for beambake: [`xml`] writes the libvirt domain XML of a built microvm image
//! (`beambake libvirt-xml`), [`port`] is the port program that lets Erlang drive a
//! libvirt connection (`beambake libvirt-port URI`, used by the Erlang module
//! `beambake_libvirt`).
//!
//! Owns: the mapping of a boot plan onto libvirt's domain XML, and the libvirt calls the
//! port offers. Must not: build images, start VMs itself, or touch the host's network
//! (a tap is named by the user, never created here).

pub mod port;
pub mod xml;
