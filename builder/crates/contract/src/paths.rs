//! Guest paths both sides use: the builder puts files there, the init reads or writes
//! them.

/// The launch spec (JSON, see [`crate::launch`]).
pub const LAUNCH_PATH: &str = "/etc/beambake/launch.json";
/// The launch spec as lines, for the OSv loader `start-otp.so` (see
/// [`crate::launch::LaunchSpec::to_lines`]).
pub const LAUNCH_LINES_PATH: &str = "/etc/beambake/launch.lines";

/// A random cookie's `-setcookie` line, read by erlexec (`-args_file`): for targets
/// that append it to their image per build, so the rest of the image is cached.
pub const COOKIE_ARGS_PATH: &str = "/etc/beambake/cookie.args";

/// The kernel modules the init loads: one absolute `.ko` path per line, in dependency
/// order (empty when the kernel needs none).
pub const MODULES_PATH: &str = "/etc/beambake/modules";

/// The hosts file the init writes at boot (the root may be read-only).
pub const RUN_HOSTS: &str = "/run/hosts";

/// The usual hosts file: the builder makes it a symlink to [`RUN_HOSTS`]; the init also
/// writes it when it is a plain file on a writable root.
pub const ETC_HOSTS: &str = "/etc/hosts";
