//! Test support shared by beambake's crates: skips that are seen and counted ([`skip`]),
//! golden files ([`golden`]).

pub mod golden;
pub mod skip;
