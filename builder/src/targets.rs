//! The target registry: every target the CLI can build, found by the recipe's
//! `target = "..."`. Adding a target is its crate (`builder/crates/target-NAME`,
//! implementing [`beambake_target::Target`]) plus one line here.
//!
//! Must not: hold target logic (that is the targets' crates and `beambake_target`).

use beambake_recipe::Target as Kind;
use beambake_target::Target;

/// Every registered target.
pub const ALL: &[&dyn Target] = &[
    &beambake_target_microvm::Microvm,
    &beambake_target_uml::Uml,
    &beambake_target_rumprun::Rumprun,
    &beambake_target_osv::Osv,
];

/// The target a recipe's `target` names, when beambake can build it.
pub fn find(kind: Kind) -> Option<&'static dyn Target> {
    ALL.iter().copied().find(|t| t.kind() == kind)
}
