//! The `beambake` command line: parses arguments, shows progress, prints results.
//! All work happens in the library (`beambake::pipeline`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use beambake::assemble;
use beambake::ci::{self, BuildOutput, Failure, Phase, SmokeOutput};
use beambake::exit::{Exit, Usage};
use beambake::image::compress::Compression;
use beambake::image::{self, Format};
use beambake::output::parent_dir;
use beambake::pipeline::{self, Input, Prepared, Progress};
use beambake::recipe::{Accel, Recipe};
use beambake::release::{Discover, NativeKind};
use beambake::rootfs::Tree;
use beambake::source::Resolve;
use beambake::{run, sandbox};

#[derive(Parser)]
#[command(
    name = "beambake",
    version,
    about = "Turns an Erlang/OTP release into an immutable guest image and proves it boots",
    after_help = "Recipes (RECIPE.toml for build, boot and smoke): every key is described in README.md, \
                  section \"Recipe format\", and the recipes/ directory holds annotated examples. \
                  When something fails, `beambake doctor` says what this host can do."
)]
struct Cli {
    /// Print each step and the tools' output.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Print nothing but errors (and the JSON with --json): no progress, notes or summary.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what beambake discovers in a release (name, ERTS, apps, native binaries,
    /// host libraries, size).
    Inspect {
        #[command(flatten)]
        input: InputArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Report the image tree's size instead: its 20 biggest files (release, ERTS,
        /// libraries, launch spec, beambake's init; not the kernel's modules, which
        /// depend on the recipe), each compressed alone with zstd at `--level`.
        #[arg(long)]
        sizes: bool,
        /// The zstd level for `--sizes` (the microvm initramfs's default: 9).
        #[arg(long, default_value_t = 9, requires = "sizes", value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
    },
    /// Write the release's root filesystem as a cpio initramfs (or, for `.iso`, an ISO 9660
    /// image with Rock Ridge), with its manifest.
    Rootfs {
        #[command(flatten)]
        input: InputArgs,
        /// Output image (`.cpio`, `.cpio.gz`, `.cpio.zst`, `.iso`).
        #[arg(short, long)]
        output: PathBuf,
        /// Compression; by default from the output's extension.
        #[arg(long, value_enum)]
        compression: Option<CompressionArg>,
        /// Compression level (gzip 0-9, zstd 1-22).
        #[arg(long)]
        level: Option<i32>,
        /// Manifest path [default: manifest.json beside the image].
        #[arg(long)]
        manifest: Option<PathBuf>,
        /// Add the per-file table (path, mode, size, sha256, origin) to the manifest.
        #[arg(long)]
        list: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a recipe's image (release -> rootfs -> initramfs + kernel + boot plan).
    Build {
        /// Recipe file (TOML).
        recipe: PathBuf,
        #[command(flatten)]
        out: OutArgs,
        /// Print the result as JSON: the output dir, every artefact (path, size, sha256),
        /// the time of each phase; on failure `ok`, `exit_code` and `error`.
        #[arg(long)]
        json: bool,
    },
    /// Boot a built image (its output directory, or a recipe: built first) in a private
    /// network namespace, console on this terminal.
    Boot {
        /// A build's output directory (holding boot.json) or a recipe file.
        image: PathBuf,
        #[command(flatten)]
        out: OutArgs,
        /// Override the recipe's accelerator.
        #[arg(long, value_enum)]
        accel: Option<AccelArg>,
        /// Start this many VMs from the one image (addresses from the recipe's guest
        /// address upwards; the first VM's console is this terminal).
        #[arg(long)]
        count: Option<u32>,
    },
    /// Run one VM as an Erlang port program (`beambake_vm` in erlang/ opens it): console
    /// lines, Ethernet frames and the init's control line as `{packet, 4}` terms on
    /// stdin/stdout, no tap and no root needed; the VM is killed when stdin closes.
    Port {
        /// A build's output directory (microvm or uml) or a recipe file (built first).
        image: PathBuf,
        #[command(flatten)]
        out: OutArgs,
        /// Override the recipe's accelerator.
        #[arg(long, value_enum)]
        accel: Option<AccelArg>,
        /// The guest's address at boot, ADDR/PREFIX [default: none until `ifconfig`].
        #[arg(long)]
        ip: Option<String>,
        /// Its default gateway (with --ip).
        #[arg(long, requires = "ip")]
        gw: Option<std::net::Ipv4Addr>,
        /// The NIC's MAC address [default: random, 52:54:00:xx:xx:xx].
        #[arg(long)]
        mac: Option<String>,
        /// The node name NAME@HOST [default: the image's node name at --ip].
        #[arg(long)]
        node: Option<String>,
        /// Seconds a `stop` waits for the guest's clean power-off before killing it.
        #[arg(long, default_value_t = 30)]
        stop_timeout: u64,
        /// Run the VM as a transient domain of this libvirt daemon on this host (e.g.
        /// qemu:///system) instead of a qemu of beambake's own: a microvm image built with
        /// vm.machine = "pc"; console, control line and NIC on Unix sockets.
        #[arg(long, value_name = "URI")]
        libvirt: Option<String>,
    },
    /// Apply, check, revert or show beambake's OTP patch sets (patches/otp/MAJOR/SET) on an
    /// OTP source tree: all or nothing, no offset or fuzz accepted, version checked first.
    Patch {
        #[arg(value_enum)]
        action: PatchAction,
        /// The OTP source tree (holds OTP_VERSION).
        #[arg(long)]
        otp_src: PathBuf,
        /// The set: osv, rumprun, ...
        #[arg(long)]
        set: String,
        /// The patches directory [default: ./patches, else the checkout's].
        #[arg(long)]
        patches: Option<PathBuf>,
    },
    /// The build cache (content-addressed output sets of earlier builds): list entries or
    /// remove old ones. Its dir is $BEAMBAKE_BUILD_CACHE, else builds/ in beambake's cache
    /// dir ($XDG_CACHE_HOME/beambake or ~/.cache/beambake).
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Build (once) or find in the cache a toolchain a target needs, and print where it
    /// is. `rumprun`: rumprun's `hw` toolchain (rumprun-bake, x86_64-rumprun-netbsd-gcc,
    /// rumprun) from the pinned source snapshot (images/rumprun.toml); a second call is a
    /// cache hit. Point RUMPRUN_TOOLCHAIN at the printed dir to use it outside beambake.
    Toolchain {
        #[command(subcommand)]
        which: ToolchainKind,
    },
    /// What this host can do for beambake, and why: KVM (with the probe's evidence), qemu,
    /// tap and user namespaces, User Mode Linux, rebar3/erl/elixir, the cache. Start here
    /// when something fails.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Probe KVM with this kernel (a bzImage) [default: the microvm recipe's Debian
        /// cloud kernel, fetched into the cache when absent].
        #[arg(long)]
        kernel: Option<PathBuf>,
    },
    /// Build, boot in a fresh namespace, run the recipe's checks, tear everything down.
    Smoke {
        /// Recipe file (TOML), or a build's output directory (smoke without building).
        recipe: PathBuf,
        #[command(flatten)]
        out: OutArgs,
        /// Write the results as JUnit XML.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Print the result as JSON: the checks, accelerator, boot to ready, the build and
        /// the exit code; on failure `ok`, `exit_code` and `error`.
        #[arg(long)]
        json: bool,
        /// Once the first check passes, save the guest beside the image (`snapshot.state`,
        /// qemu's migration stream, and `snapshot.json`) and stop: microvm, one VM.
        #[arg(long, conflicts_with = "from_snapshot")]
        save_snapshot: bool,
        /// Start the guest from the image's snapshot instead of booting it (its clock and
        /// random pool resynced first), then run every check. Refused when the snapshot
        /// was made from another image, memory size, machine, qemu or accelerator.
        #[arg(long)]
        from_snapshot: bool,
    },
    /// Write the libvirt domain XML of a built microvm image: direct kernel boot of its
    /// kernel, initramfs and VM command line, machine pc (libvirt 9.0 drives qemu's microvm
    /// machine poorly), TCG unless beambake's KVM probe proves KVM, the serial console to a
    /// file or a pty, no network unless --tap.
    LibvirtXml {
        /// A build's output directory (holding boot.json).
        dir: PathBuf,
        /// Write the XML here [default: standard output].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Plug the VM's NIC into this pre-made tap (libvirt opens it and creates nothing;
        /// the image must be built with vm.machine = "pc").
        #[arg(long, value_name = "NAME")]
        tap: Option<String>,
        /// The serial console: a file (relative to DIR) or `pty` [default:
        /// DIR/libvirt-console.log].
        #[arg(long, value_name = "FILE|pty")]
        console: Option<String>,
        /// The domain's name [default: beambake-NAME-N].
        #[arg(long)]
        name: Option<String>,
        /// Which VM of the plan, from 1 (its address and node name).
        #[arg(long, default_value_t = 1)]
        instance: usize,
        /// Override the plan's accelerator (auto: KVM only when the probe proves it).
        #[arg(long, value_enum)]
        accel: Option<AccelArg>,
    },
    /// Drive a libvirt connection from Erlang: a port program ({packet, 4} frames of
    /// external-term-format terms on stdin/stdout) started by the Erlang module
    /// beambake_libvirt; it ends when its standard input closes.
    LibvirtPort {
        /// The libvirt URI, e.g. qemu:///system or qemu+unix:///system?socket=PATH.
        uri: String,
    },
}

#[derive(Args)]
struct OutArgs {
    /// Where build outputs go (one directory per recipe inside).
    #[arg(long, default_value = "beambake-out")]
    out: PathBuf,
    /// Use this kernel instead of the recipe's (microvm: a bzImage; uml: a User Mode
    /// Linux `linux` executable).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Modules for --kernel (a dir holding lib/modules/RELEASE, or that dir itself).
    #[arg(long, requires = "kernel")]
    modules: Option<PathBuf>,
    /// rumprun: write erlang.iso, app.iso and the launch config without baking the BEAM
    /// (no rumprun toolchain needed).
    #[arg(long)]
    no_bake: bool,
    /// Neither read nor write the build cache (see `beambake cache`).
    #[arg(long)]
    no_cache: bool,
}

impl OutArgs {
    /// The build cache's dir, unless --no-cache.
    fn builds(&self) -> Option<PathBuf> {
        (!self.no_cache).then(run::build_cache_dir)
    }

    /// Loads a recipe and applies the command line's overrides.
    fn recipe(&self, path: &Path) -> Result<Recipe> {
        let mut r = Recipe::load(path)?;
        r.rumprun.no_bake = self.no_bake;
        if let Some(k) = &self.kernel {
            // Your own kernel replaces the recipe's, the minimal one included.
            r.kernel.source = beambake::recipe::KernelSource::Debian;
            r.kernel.path = Some(std::path::absolute(k)?.into());
            r.kernel.modules = self
                .modules
                .as_ref()
                .map(std::path::absolute)
                .transpose()?
                .map(Into::into);
        }
        Ok(r)
    }
}

#[derive(Subcommand)]
enum ToolchainKind {
    /// rumprun (platform hw): the rump kernel, NetBSD's libc, the compiler wrappers,
    /// rumprun-bake and the rumprun launcher.
    Rumprun {
        /// The source snapshot (rumprun-src.tar.xz, sha256 pinned in images/rumprun.toml)
        /// [default: $BEAMBAKE_RUMPRUN_SRC].
        #[arg(long)]
        source: Option<PathBuf>,
        /// Print the result as JSON: dir, bin, key, whether it was built now.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// List the entries, least recently used first (key, name, target, size, unused for).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove the least recently used entries until the rest fit in --max-size; without
    /// it, the entries unused for 30 days. Also removes what killed builds left.
    Gc {
        /// Bytes, or with a suffix K, M, G (powers of 1024), e.g. 2G; 0 empties the cache.
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

/// `2G`, `512M`, `100K`, `1234`.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{s:?}: a size in bytes, or with K, M, G or T"))
}

#[derive(Clone, Copy, ValueEnum)]
enum PatchAction {
    Apply,
    Check,
    Revert,
    Status,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(Args)]
struct InputArgs {
    /// A release directory, a release tarball (.tar.gz) or a rebar3 project.
    release: PathBuf,
    /// rebar3 profile to build a project with.
    #[arg(long)]
    profile: Option<String>,
    /// Which release, when a rebar3 project defines several.
    #[arg(long = "release", value_name = "NAME")]
    release_name: Option<String>,
    /// Host Erlang/OTP root for what the release does not bundle [default: from `erl` on PATH].
    #[arg(long)]
    otp_root: Option<PathBuf>,
    /// An installed OTP build (e.g. patched by `beambake patch`) whose ERTS replaces the
    /// release's; it must hold the same ERTS version.
    #[arg(long)]
    erts_from: Option<PathBuf>,
    /// Guest directory of the release [default: /opt/NAME].
    #[arg(long)]
    prefix: Option<String>,
    /// How gzipped `.beam` files are stored: `plain` (decompressed, for an image compressed
    /// as a whole) or `as-built` [default: plain for a compressed cpio and for `--sizes`
    /// (as the microvm target does), else as-built].
    #[arg(long, value_enum)]
    beams: Option<BeamsArg>,
    /// Keep every program of the ERTS (`erl`, `escript`, `erl_call`, `epmd`, ...) and
    /// their libraries, not only those beambake's launch spec runs: for a tree started
    /// by the release's own scripts.
    #[arg(long)]
    all_erts_programs: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum BeamsArg {
    AsBuilt,
    Plain,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    None,
    Gzip,
    Zstd,
}

/// Progress on stderr: a spinner when stdout and stderr are terminals, each step as a plain line
/// with `-v`, nothing with `-q`. Records when each step began, for `--json`'s timings.
struct Steps {
    bar: ProgressBar,
    verbose: bool,
    quiet: bool,
    started: Instant,
    phases: Mutex<Vec<(String, Instant)>>,
}

impl Steps {
    fn new(verbose: bool, quiet: bool) -> Steps {
        // CI logs and pipes (`--json | jq`) get no animation.
        let terminal = std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
        Steps::make(verbose, quiet, !quiet && terminal)
    }
    /// Never animated: the terminal belongs to the guest's console (boot) or stdout to a
    /// port's terms.
    fn plain(verbose: bool, quiet: bool) -> Steps {
        Steps::make(verbose, quiet, false)
    }
    fn make(verbose: bool, quiet: bool, animate: bool) -> Steps {
        let bar = if animate {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        if animate {
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        Steps {
            bar,
            verbose: verbose && !quiet,
            quiet,
            started: Instant::now(),
            phases: Mutex::new(Vec::new()),
        }
    }
    fn done(&self) {
        self.bar.finish_and_clear();
    }
    /// How long each step took, until now.
    fn timings(&self) -> Vec<Phase> {
        let phases = self.phases.lock().map(|p| p.clone()).unwrap_or_default();
        let now = Instant::now();
        let mut out: Vec<Phase> = Vec::new();
        let mut last = self.started;
        let mut name = None::<String>;
        for (what, at) in phases {
            if let Some(n) = name.take() {
                out.push(Phase {
                    phase: n,
                    ms: at.duration_since(last).as_millis() as u64,
                });
            } else {
                // Reading the recipe, checking the host: before the first step.
                let ms = at.duration_since(last).as_millis() as u64;
                if ms > 0 {
                    out.push(Phase {
                        phase: "starting".into(),
                        ms,
                    });
                }
            }
            last = at;
            name = Some(what);
        }
        if let Some(n) = name {
            out.push(Phase {
                phase: n,
                ms: now.duration_since(last).as_millis() as u64,
            });
        }
        out
    }
}

impl Progress for Steps {
    fn step(&self, what: &str) {
        if let Ok(mut p) = self.phases.lock() {
            p.push((what.to_string(), Instant::now()));
        }
        if self.verbose {
            self.bar.suspend(|| eprintln!("beambake: {what}"));
        }
        self.bar.set_message(what.to_string());
    }
    fn detail(&self, what: &str) {
        if self.verbose {
            self.bar.suspend(|| eprintln!("beambake:   {what}"));
        }
    }
    fn note(&self, what: &str) {
        if !self.quiet {
            self.bar.suspend(|| eprintln!("beambake: note: {what}"));
        }
    }
    fn verbose(&self) -> bool {
        self.verbose
    }
}

impl InputArgs {
    fn input(&self, verbose: bool) -> Input {
        Input {
            path: self.release.clone(),
            resolve: Resolve {
                profile: self.profile.clone(),
                release: self.release_name.clone(),
                verbose,
            },
            discover: Discover {
                otp_root: self.otp_root.clone(),
            },
            trace: false,
        }
    }
    /// The assembly's options; `beams` unless `--beams` says otherwise.
    fn options(&self, beams: assemble::Beams) -> Result<assemble::Options> {
        Ok(assemble::Options {
            prefix: self.prefix.clone(),
            mtime: Tree::epoch_from_env()?,
            distribution: Default::default(),
            code_loading: None,
            preload: None,
            extra_args: Vec::new(),
            shell: false,
            erts_from: self.erts_from.clone(),
            beams: match self.beams {
                Some(BeamsArg::AsBuilt) => assemble::Beams::AsBuilt,
                Some(BeamsArg::Plain) => assemble::Beams::Plain,
                None => beams,
            },
            all_erts_programs: self.all_erts_programs,
        })
    }
}

fn main() -> ExitCode {
    // Internal entry points of the sandbox (see beambake::sandbox); not for users.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some(sandbox::SANDBOX_ARG) if args.len() == 4 => {
            let fd = |i: usize| args[i].to_str().unwrap_or_default();
            return ExitCode::from(sandbox::main(fd(2), fd(3)) as u8);
        }
        Some(sandbox::REAPER_ARG) => return ExitCode::from(sandbox::reaper_main() as u8),
        _ => {}
    }
    // Printing into a closed pipe (`beambake inspect | head`) ends quietly, like any CLI.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let json = cli.command.json();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let category = category(&e);
            let text = error_text(&e);
            eprintln!("beambake: error: {text}");
            if json {
                let failure = Failure::new(category, text);
                if let Ok(j) = serde_json::to_string_pretty(&failure) {
                    println!("{j}");
                }
            }
            ExitCode::from(category.code())
        }
    }
}

impl Command {
    /// The command prints JSON (`--json`): its failures too.
    fn json(&self) -> bool {
        match self {
            Command::Inspect { json, .. }
            | Command::Rootfs { json, .. }
            | Command::Build { json, .. }
            | Command::Smoke { json, .. }
            | Command::Doctor { json, .. } => *json,
            Command::Toolchain {
                which: ToolchainKind::Rumprun { json, .. },
            } => *json,
            Command::Cache {
                action: CacheAction::Ls { json } | CacheAction::Gc { json, .. },
            } => *json,
            Command::Boot { .. }
            | Command::Port { .. }
            | Command::Patch { .. }
            | Command::LibvirtXml { .. }
            | Command::LibvirtPort { .. } => false,
        }
    }
}

/// The exit code of an error: the first error in its chain whose category is known
/// ([`Exit`]); any other is [`Exit::Other`].
fn category(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if let Some(e) = cause.downcast_ref::<pipeline::Error>() {
            return Exit::of_error(e);
        }
        if let Some(e) = cause.downcast_ref::<beambake::boot::BootError>() {
            return Exit::of_boot(e);
        }
        if cause
            .downcast_ref::<beambake::recipe::RecipeError>()
            .is_some()
            || cause
                .downcast_ref::<beambake::boot::accel::AccelError>()
                .is_some()
            || cause.downcast_ref::<Usage>().is_some()
        {
            return Exit::BadInput;
        }
    }
    Exit::Other
}

fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Inspect {
            input,
            json,
            sizes,
            level,
        } => {
            let steps = Steps::new(cli.verbose, cli.quiet);
            let beams = if sizes {
                assemble::Beams::Plain
            } else {
                assemble::Beams::AsBuilt
            };
            let p = pipeline::prepare(&input.input(cli.verbose), &input.options(beams)?, &steps);
            steps.done();
            let p = p?;
            if sizes {
                // The tree as the microvm and uml images hold it: with beambake's init
                // (kernel modules depend on the recipe's kernel, so they are not counted).
                let mut tree = p.assembly.tree.clone();
                beambake::target::add_init(&mut tree, beambake::INIT)?;
                let s = beambake_images::sizes::measure(&tree, level, 20)
                    .map_err(|(path, e)| anyhow::anyhow!("{path}: {e}"))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print_sizes(&s);
                }
            } else if json {
                println!("{}", serde_json::to_string_pretty(&inspect_json(&p)?)?);
            } else {
                print_inspect(&p)?;
            }
            Ok(0)
        }
        Command::Rootfs {
            input,
            output,
            compression,
            level,
            manifest,
            list,
            json,
        } => {
            let compression = match compression {
                Some(CompressionArg::None) => Compression::None,
                Some(CompressionArg::Gzip) => Compression::Gzip,
                Some(CompressionArg::Zstd) => Compression::Zstd,
                None => Compression::from_extension(&output),
            };
            let level = level.unwrap_or(compression.default_level());
            let steps = Steps::new(cli.verbose, cli.quiet);
            let result = (|| -> Result<_> {
                let beams = if compression == Compression::None {
                    assemble::Beams::AsBuilt
                } else {
                    assemble::Beams::Plain
                };
                let p =
                    pipeline::prepare(&input.input(cli.verbose), &input.options(beams)?, &steps)?;
                steps.step(&format!("writing {}", output.display()));
                let format = if output.extension().is_some_and(|e| e == "iso") {
                    Format::Iso9660 {
                        volume: p.release.name.clone(),
                    }
                } else {
                    Format::Cpio { compression, level }
                };
                let written = image::write(&p.assembly.tree, &format, &output)?;
                let manifest_path = manifest
                    .clone()
                    .unwrap_or_else(|| parent_dir(&output).join("manifest.json"));
                let dir = parent_dir(&manifest_path);
                let m = pipeline::manifest(&p, &[(written.clone(), format.label())], dir, list)?;
                beambake::output::write_bytes(&manifest_path, m.to_json().as_bytes())?;
                Ok((written, manifest_path))
            })();
            steps.done();
            let (written, manifest_path) = result?;
            if json {
                let v = serde_json::json!({
                    "image": written.path, "size": written.size, "sha256": written.sha256,
                    "manifest": manifest_path,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{} ({}, sha256 {})",
                    written.path.display(),
                    human(written.size),
                    written.sha256
                );
                if cli.verbose {
                    println!("manifest: {}", manifest_path.display());
                }
            }
            Ok(0)
        }
        Command::Build { recipe, out, json } => {
            let recipe = out.recipe(&recipe)?;
            let steps = Steps::new(cli.verbose, cli.quiet);
            let built = run::build(&recipe, &out.out, out.builds().as_deref(), &steps);
            steps.done();
            let built = built?;
            if json {
                let o = BuildOutput::new(&built, recipe.target, steps.timings())?;
                println!("{}", serde_json::to_string_pretty(&o)?);
            } else if !cli.quiet {
                println!("{}", built.image.path.display());
                let kernel = built.dir.join(&built.plan.kernel);
                if kernel.is_file() {
                    println!("{}", kernel.display());
                }
                println!("{}", built.manifest.display());
            }
            Ok(0)
        }
        Command::Port {
            image,
            out,
            accel,
            ip,
            gw,
            mac,
            node,
            stop_timeout,
            libvirt,
        } => {
            let ip = ip
                .map(|v| {
                    beambake_contract::cmdline::parse_cidr(&v)
                        .map_err(|e| anyhow::Error::new(Usage(format!("--ip {v}: {e}"))))
                })
                .transpose()?;
            let mac = mac
                .map(|v| {
                    beambake::boot_port::parse_mac(&v).ok_or_else(|| {
                        anyhow::Error::new(Usage(format!("--mac {v}: want aa:bb:cc:dd:ee:ff")))
                    })
                })
                .transpose()?;
            let opts = beambake::boot_port::PortOpts {
                ip: ip.map(|c| (c, gw)),
                mac,
                node,
                stop_timeout: std::time::Duration::from_secs(stop_timeout),
            };
            // Progress and errors go to stderr: stdout carries the port's terms.
            let steps = Steps::plain(cli.verbose, cli.quiet);
            let dir = if image.is_file() {
                run::build(
                    &out.recipe(&image)?,
                    &out.out,
                    out.builds().as_deref(),
                    &steps,
                )?
                .dir
            } else {
                image
            };
            let accel = accel.map(|a| match a {
                AccelArg::Auto => Accel::Auto,
                AccelArg::Kvm => Accel::Kvm,
                AccelArg::Tcg => Accel::Tcg,
            });
            match libvirt {
                Some(uri) => {
                    let (_, base) = libvirt_base(&dir, accel)?;
                    run::port_libvirt(&dir, &uri, &base, &opts)?;
                }
                None => run::port(&dir, accel, &opts, &steps)?,
            }
            Ok(0)
        }
        Command::Boot {
            image,
            out,
            accel,
            count,
        } => {
            // A bad BEAMBAKE_ACCEL is refused before anything is built.
            beambake::boot::accel::env_accel()?;
            let steps = Steps::new(cli.verbose, cli.quiet);
            let dir = if image.is_file() {
                let recipe = out.recipe(&image)?;
                // Refused before anything is built.
                sandbox::check_runnable(recipe.network.mode)?;
                let built = run::build(&recipe, &out.out, out.builds().as_deref(), &steps);
                built?.dir
            } else {
                image
            };
            let accel = accel.map(accel_of);
            steps.done();
            let quiet_steps = Steps::plain(cli.verbose, cli.quiet);
            let (_, outcome, logs) = run::boot(
                &dir,
                accel,
                count,
                sandbox::Mode::Interactive,
                None,
                &quiet_steps,
            )?;
            // The first VM's console is the one on the terminal.
            let log = logs.first().cloned().unwrap_or_default();
            // The one command whose code is not from the table: the guest's own status.
            match outcome.guest_exit {
                Some(s) => {
                    if !cli.quiet {
                        eprintln!(
                            "beambake: guest exited with status {s} (console log: {})",
                            log.display()
                        );
                    }
                    Ok(u8::try_from(s).unwrap_or(1))
                }
                None => {
                    eprintln!(
                        "beambake: the VM ended without a guest status (console log: {})",
                        log.display()
                    );
                    Ok(Exit::Boot.code())
                }
            }
        }
        Command::Patch {
            action,
            otp_src,
            set,
            patches,
        } => {
            use beambake::patchset::{self, Action};
            let dir = patches.unwrap_or_else(patchset::default_patches_dir);
            let series = patchset::series_for(&dir, &otp_src, &set)?;
            let action = match action {
                PatchAction::Apply => Action::Apply,
                PatchAction::Check => Action::Check,
                PatchAction::Revert => Action::Revert,
                PatchAction::Status => {
                    let st = patchset::status(&series.patches, &otp_src)?;
                    print!("{st}");
                    let conflicts = st
                        .patches
                        .iter()
                        .any(|(_, s)| matches!(s, beambake::patch::PatchStatus::Conflicts(_)));
                    return Ok(if conflicts { 2 } else { 0 });
                }
            };
            let report = patchset::run(&series.patches, &otp_src, action)?;
            if cli.verbose {
                print!("{report}");
            }
            let verb = match action {
                Action::Apply => "applied",
                Action::Check => "applies cleanly",
                Action::Revert => "reverted",
            };
            println!(
                "{set}: {} patch(es) {verb} ({})",
                series.patches.len(),
                otp_src.display()
            );
            Ok(0)
        }
        Command::Doctor { json, kernel } => {
            let steps = Steps::new(cli.verbose, cli.quiet);
            let opts = beambake::doctor::Options {
                kernel: kernel.map(std::path::absolute).transpose()?,
                cache_dir: beambake::kernel::default_cache_dir(),
            };
            let report = beambake::doctor::run(&opts, &|what| steps.step(what));
            steps.done();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(0)
        }
        Command::Smoke {
            recipe,
            out,
            junit,
            json,
            save_snapshot,
            from_snapshot,
        } => {
            beambake::boot::accel::env_accel()?;
            let steps = Steps::new(cli.verbose, cli.quiet);
            let op = match (save_snapshot, from_snapshot) {
                (true, _) => Some(sandbox::SnapshotOp::Save),
                (_, true) => Some(sandbox::SnapshotOp::Restore),
                _ => None,
            };
            let result = if recipe.is_dir() {
                run::smoke_snapshot(&recipe, op, &steps)
                    .map(|(report, log, snap)| (None, report, log, snap))
                    .map_err(anyhow::Error::from)
            } else {
                out.recipe(&recipe).and_then(|r| {
                    run::smoke_check(&r)?;
                    let built = run::build(&r, &out.out, out.builds().as_deref(), &steps)?;
                    let build_timings = steps.timings();
                    let (report, log, snap) = run::smoke_snapshot(&built.dir, op, &steps)?;
                    Ok((Some((built, r.target, build_timings)), report, log, snap))
                })
            };
            steps.done();
            let (built, report, log, snap) = result?;
            if let Some(j) = &junit {
                beambake::smoke::write_junit(&report, j)?;
            }
            let category = Exit::of_report(&report);
            if json {
                let build = built
                    .map(|(b, target, timings)| BuildOutput::new(&b, target, timings))
                    .transpose()?;
                let mut o = SmokeOutput::new(report, build, log, steps.timings());
                o.snapshot = snap;
                println!("{}", serde_json::to_string_pretty(&o)?);
            } else if !cli.quiet {
                print_report(&report, &log);
                if let Some(s) = &snap {
                    print_snapshot(s);
                }
            } else if category != Exit::Ok {
                eprintln!("beambake: error: {}", ci::summary(&report, category));
            }
            Ok(category.code())
        }
        Command::LibvirtXml {
            dir,
            output,
            tap,
            console,
            name,
            instance,
            accel,
        } => {
            use beambake::libvirt::xml::{ConsoleOut, Options};
            beambake::boot::accel::env_accel()?;
            let opts = Options {
                name,
                instance,
                tap,
                console: console.map(|c| {
                    if c == "pty" {
                        ConsoleOut::Pty
                    } else {
                        ConsoleOut::File(c.into())
                    }
                }),
                ..Options::default()
            };
            libvirt_xml(&dir, output.as_deref(), opts, accel.map(accel_of))?;
            Ok(0)
        }
        Command::LibvirtPort { uri } => {
            beambake::libvirt::port::run(&uri)?;
            Ok(0)
        }
        Command::Toolchain {
            which: ToolchainKind::Rumprun { source, json },
        } => {
            let steps = Steps::new(cli.verbose, cli.quiet);
            let snapshot = beambake::rumprun_toolchain::locate(source.as_deref())?;
            let tc = beambake::rumprun_toolchain::get(
                Some(&snapshot),
                &beambake::kernel::default_cache_dir(),
                &|what| steps.step(what),
            )?;
            steps.done();
            let built = tc.outcome == beambake::build_cache::Outcome::Built;
            if json {
                let v = serde_json::json!({
                    "dir": tc.dir,
                    "bin": tc.bin(),
                    "key": tc.key,
                    "built": built,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                if !cli.quiet {
                    eprintln!(
                        "beambake: rumprun toolchain {} ({})",
                        tc.key,
                        if built { "built now" } else { "from the cache" }
                    );
                }
                println!("{}", tc.dir.display());
            }
            Ok(0)
        }
        Command::Cache { action } => {
            let cache = beambake::target::build_cache::Cache::new(run::build_cache_dir());
            let (entries, removed, json) = match action {
                CacheAction::Ls { json } => (cache.list()?, false, json),
                CacheAction::Gc { max_size, json } => (cache.gc(max_size)?, true, json),
            };
            if json {
                let v = serde_json::json!({
                    "dir": cache.dir(),
                    if removed { "removed" } else { "entries" }: entries,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("build cache: {}", cache.dir().display());
                for e in &entries {
                    println!(
                        "{}{}  {:<24} {:<8} {:>10}  unused {}",
                        if removed { "removed " } else { "" },
                        e.key,
                        e.name,
                        format!("{:?}", e.target).to_lowercase(),
                        human(e.size),
                        age(e.unused_secs)
                    );
                }
                let total: u64 = entries.iter().map(|e| e.size).sum();
                println!(
                    "{} {} entries, {}",
                    if removed { "removed" } else { "total" },
                    entries.len(),
                    human(total)
                );
            }
            Ok(0)
        }
    }
}

fn age(secs: u64) -> String {
    match secs {
        s if s >= 86400 => format!("{}d", s / 86400),
        s if s >= 3600 => format!("{}h", s / 3600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn accel_of(a: AccelArg) -> Accel {
    match a {
        AccelArg::Auto => Accel::Auto,
        AccelArg::Kvm => Accel::Kvm,
        AccelArg::Tcg => Accel::Tcg,
    }
}

/// `beambake libvirt-xml`: the plan, its accelerator (the probe on machine pc), the XML.
fn libvirt_xml(
    dir: &Path,
    output: Option<&Path>,
    opts: beambake::libvirt::xml::Options,
    accel: Option<Accel>,
) -> Result<()> {
    let (plan, base) = libvirt_base(dir, accel)?;
    let opts = beambake::libvirt::xml::Options {
        accel: base.accel,
        accel_reason: base.accel_reason,
        tsc_khz: base.tsc_khz,
        emulator: base.emulator,
        ..opts
    };
    let text = beambake::libvirt::xml::domain_xml(&plan, &std::path::absolute(dir)?, &opts)?;
    match output {
        Some(o) => {
            beambake::output::write_bytes(o, text.as_bytes())?;
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// The plan of the microvm image in `dir` and what every domain of it gets: the
/// accelerator (the probe on machine pc, as libvirt runs it), the TSC under TCG, and the
/// emulator named by `BEAMBAKE_QEMU`.
fn libvirt_base(
    dir: &Path,
    accel: Option<Accel>,
) -> Result<(beambake::boot::BootPlan, beambake::libvirt::xml::Options)> {
    use beambake::boot::{accel as probe, qemu};
    use beambake::libvirt::xml;
    let plan = xml::load(dir)?;
    let mut pc = plan.clone();
    pc.machine = beambake::recipe::Machine::Pc;
    let target = probe::ProbeTarget::for_plan(&pc, dir, beambake::INIT);
    let choice = probe::choose(
        accel,
        plan.accel,
        &target,
        &beambake::kernel::default_cache_dir(),
    )?;
    let emulator = std::env::var_os(qemu::QEMU_ENV)
        .filter(|v| !v.is_empty())
        .map(|v| {
            let p = PathBuf::from(&v);
            if p.components().count() > 1 {
                std::path::absolute(&p).map_err(anyhow::Error::from)
            } else {
                beambake::host::which(&p.to_string_lossy()).with_context(|| {
                    format!("{}={}: not found on PATH", qemu::QEMU_ENV, p.display())
                })
            }
        })
        .transpose()?;
    let base = xml::Options {
        accel: choice.accelerator,
        accel_reason: choice.reason.clone(),
        tsc_khz: (choice.accelerator == qemu::Accelerator::Tcg)
            .then(qemu::host_tsc_khz)
            .flatten(),
        emulator,
        ..xml::Options::default()
    };
    Ok((plan, base))
}

fn print_snapshot(s: &sandbox::SnapshotOutcome) {
    if let (Some(m), Some(ms)) = (&s.saved, s.save_ms) {
        println!(
            "snapshot saved: {} ({:.1} MiB) in {:.2}s",
            beambake::snapshot::STATE_FILE,
            m.state_bytes as f64 / (1u64 << 20) as f64,
            ms as f64 / 1000.0
        );
    }
    if let Some(step) = s.clock_step_ms {
        println!(
            "restored from the snapshot; guest clock stepped by {step} ms, random pool reseeded"
        );
    }
}

fn print_report(r: &beambake::smoke::Report, log: &Path) {
    for c in &r.checks {
        println!(
            "{} {:<24} {:>7.2}s  {}",
            if c.passed { "ok  " } else { "FAIL" },
            c.name,
            c.millis as f64 / 1000.0,
            c.message
        );
    }
    match &r.accel_reason {
        Some(why) => println!("accelerator: {} ({why})", r.accel),
        None => println!("accelerator: {}", r.accel),
    }
    if let Some(ms) = r.boot_to_ready_ms {
        println!("boot to ready: {:.2}s ({})", ms as f64 / 1000.0, r.accel);
    }
    if let Some(s) = r.guest_exit {
        println!("guest exited with status {s}");
    }
    if !r.passed {
        if let Some(t) = &r.console_tail {
            println!("--- console tail ({}):\n{t}", log.display());
        }
    }
    println!("{}: {}", r.name, if r.passed { "passed" } else { "FAILED" });
}

/// The error and its causes, each cause shown only when the message above it does not
/// already include it (library errors embed their source's text).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
    }
    text
}

fn kind_name(k: NativeKind) -> &'static str {
    match k {
        NativeKind::ErtsExecutable => "erts executable",
        NativeKind::NifOrDriver => "NIF or driver",
        NativeKind::PortProgram => "port program",
    }
}

fn human(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

fn print_sizes(s: &beambake_images::sizes::Sizes) {
    println!(
        "{} files: {} raw, {} compressed one by one (zstd -{})",
        s.files,
        human(s.raw),
        human(s.compressed),
        s.level
    );
    println!("{:>10} {:>10} {:>6}  path (origin)", "zstd", "raw", "share");
    for f in &s.biggest {
        println!(
            "{:>10} {:>10} {:>5.1}%  {} ({})",
            human(f.compressed),
            human(f.raw),
            100.0 * f.compressed as f64 / s.compressed.max(1) as f64,
            f.path,
            f.origin
        );
    }
}

fn print_inspect(p: &Prepared) -> Result<()> {
    let r = &p.release;
    println!("release   {} {} ({:?})", r.name, r.vsn, r.flavor);
    println!(
        "source    {} ({:?}){}",
        p.source.input.display(),
        p.source.kind,
        if p.source.release_dir != p.source.input {
            format!(" -> {}", p.source.release_dir.display())
        } else {
            String::new()
        }
    );
    println!(
        "erts      {} ({})",
        r.erts.vsn,
        if r.erts.bundled {
            "bundled".to_string()
        } else {
            format!("host: {}", r.erts.dir.display())
        }
    );
    println!("apps      {}", r.apps.len());
    for a in &r.apps {
        println!(
            "  {:<24} {:<10} {}",
            a.name,
            a.vsn,
            if a.bundled { "bundled" } else { "host" }
        );
    }
    println!("boot      {}.boot", r.boot_rel);
    if let Some(c) = &r.sys_config_rel {
        println!("config    {c}");
    }
    if let Some(v) = &r.vm_args_rel {
        println!("vm.args   {v}");
    }
    println!("guest     {}", p.assembly.prefix);
    println!("natives   {}", r.natives.len());
    for n in &r.natives {
        println!("  {:<48} {}", n.path, kind_name(n.kind));
    }
    println!("host libs {}", p.assembly.host_libs.len());
    for l in &p.assembly.host_libs {
        println!("  {:<48} needed by {}", l.path.display(), l.needed_by);
    }
    let size = p
        .assembly
        .tree
        .content_size()
        .context("measuring the tree")?;
    println!(
        "total     {} in {} entries",
        human(size),
        p.assembly.tree.len()
    );
    Ok(())
}

fn inspect_json(p: &Prepared) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "release": &p.release,
        "source": { "input": p.source.input, "kind": p.source.kind, "release_dir": p.source.release_dir, "sha256": p.source.sha256 },
        "guest_prefix": p.assembly.prefix,
        "launch": &p.assembly.launch,
        "host_libs": &p.assembly.host_libs,
        "total_size": p.assembly.tree.content_size()?,
        "entries": p.assembly.tree.len(),
    }))
}
