//! The host/guest contract of beambake: everything the builder (host side) and the guest
//! init (`init/`, PID 1 of every VM) must agree on, defined once.
//!
//! Owns:
//! - [`launch`]: the launch spec ([`LaunchSpec`], [`Service`]), its JSON form written
//!   to [`LAUNCH_PATH`] in the image (byte for byte as the builder always wrote it), and
//!   what a usable spec is ([`LaunchSpec::validate`]);
//! - [`cmdline`]: every `beambake.*` kernel parameter as a typed value
//!   ([`GuestParams`]): formatted by the builder ([`GuestParams::to_cmdline_args`]),
//!   parsed by the init ([`GuestParams::parse`], [`GuestParams::parse_lenient`]);
//! - [`console`]: the console lines the host reads (the init's log prefix, the power-off
//!   line and its status, the accelerator probe's marker and status);
//! - [`exit`]: qemu's isa-debug-exit device and how a guest status becomes qemu's exit
//!   status;
//! - [`paths`]: the guest paths both sides use;
//! - [`control`]: the init's control line (requests and replies, `beambake port`).
//!
//! Must not: do I/O, start processes, log, or hold builder or init logic (how a spec is
//! computed for a release, how the init applies a setting, what is fatal): only types,
//! constants and pure functions that format and parse them. It is built into the static
//! init, so it depends on serde and serde_json only.

pub mod cmdline;
pub mod console;
pub mod control;
pub mod exit;
pub mod launch;
pub mod paths;

use std::fmt;

pub use cmdline::{Diagnostic, GuestParams, Ipv4Cidr, MountSpec};
pub use launch::{LaunchSpec, Service};
pub use paths::LAUNCH_PATH;

/// Why something does not follow the contract. The message says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContractError {
    /// Not the JSON of a launch spec (serde's message: line, column, field).
    LaunchJson(String),
    /// A launch spec that parses but cannot be used.
    LaunchInvalid(String),
    /// `beambake.*` kernel parameters that are unknown or malformed.
    Cmdline(Vec<Diagnostic>),
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContractError::LaunchJson(e) => write!(f, "not a valid launch spec: {e}"),
            ContractError::LaunchInvalid(e) => f.write_str(e),
            ContractError::Cmdline(diags) => {
                for (i, d) in diags.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{d}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ContractError {}
