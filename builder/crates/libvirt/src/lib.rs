//! libvirt for beambake: [`xml`] writes the libvirt domain XML of a built microvm image
//! (`beambake libvirt-xml`), [`port`] is the port program that lets Erlang drive a
//! libvirt connection (`beambake libvirt-port URI`, used by the Erlang module
//! `beambake_libvirt`), and [`guest`] runs `beambake port --libvirt URI`: a port VM
//! (what `beambake_vm` drives) as a transient libvirt domain.
//!
//! Owns: the mapping of a boot plan onto libvirt's domain XML, and the libvirt calls the
//! port offers. Must not: build images, start VMs itself, or touch the host's network
//! (a tap is named by the user, never created here).

pub mod guest;
pub mod port;
pub mod xml;

/// What every libvirt call says in a beambake built without the `libvirt` feature.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "this beambake was built without libvirt (cargo feature `libvirt`, on by default; it \
     needs Debian's libvirt-dev to build)"
)]
pub struct NotBuilt;
