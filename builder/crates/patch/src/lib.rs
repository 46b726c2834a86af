//! Patches: the strict unified-diff applier ([`patch`]) and beambake's OTP patch sets
//! ([`patchset`]).
//!
//! Must not: run `patch` or `git`, or know about images.

pub mod patch;
pub mod patchset;
