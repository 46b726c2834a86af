//! The online way into an OSv image (rebar3_osv's): boot a writable (ZFS) OSv base image
//! whose command line runs OSv's cpio receiver `/tools/cpiod.so`, stream a rootfs
//! [`Tree`] into it as cpio newc over TCP, let the guest sync and power off, then write
//! the final command line into the image ([`upload`]).
//!
//! The sequence, every wait bounded ([`Limits`]):
//! 1. The command line is checked (OSv reads at most [`MAX_CMDLINE`] bytes at byte
//!    [`CMDLINE_OFFSET`], NUL-terminated) before anything is written.
//! 2. The base (qcow2 or raw; `beambake_kernel::osv_kernel`'s `zfs/base.img`) is copied,
//!    as a sparse raw image, by `qemu-img convert` to a temp file beside the destination
//!    ([`beambake_images::output::named_temp_in`]), and [`UPLOAD_CMDLINE`] is written into
//!    it.
//! 3. qemu boots it under TCG (`-M pc`, never KVM: the guest runs for seconds, and KVM
//!    is not always usable where beambake runs): virtio-blk, virtio-net with user
//!    networking forwarding `127.0.0.1:PORT` (loopback only, a free port) to the guest's
//!    port [`RECEIVER_PORT`], serial console to a file, its stderr to another.
//! 4. When the console shows the receiver listening ([`RECEIVER_READY`]; qemu's port
//!    forward accepts a host connection before the guest listens, so a connect alone
//!    proves nothing), connect (retried with backoff until the deadline), stream the
//!    tree with [`beambake_images::image::cpio::write`], half-close, and wait for the
//!    receiver to close ([`send_tree`]).
//! 5. Wait for qemu to exit by itself (OSv powers off when its last app ends): exit
//!    status 0 and [`RECEIVER_DONE`] on the console (cpiod synced what it wrote).
//! 6. The final command line is written at byte 512, the file synced and renamed onto
//!    the destination ([`beambake_images::output::commit_named`]).
//!
//! On any failure (command line, conversion, qemu not starting or dying, no receiver by
//! the deadline, the receiver closing early, a timeout) the VM is killed and reaped (the
//! [`Guest`] owning it, in its own process group) and the temp image deleted: no half
//! image is left, and a previous file at the destination is untouched.
//!
//! The qemu process is a [`Guest`] (the one type that owns VM processes); its [`Vmm`] is
//! [`Qemu::Osv`], used only for what `Guest` asks of it here (the error when qemu cannot
//! be started): this VM is not a boot plan's.
//!
//! Must not: decide what goes into the tree, or where the base comes from.

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use beambake_images::image::cpio::{self, CpioError};
use beambake_images::image::osv_disk;
use beambake_images::output::{self, Clobber, OutputError};
use beambake_images::rootfs::Tree;

use crate::boot::guest::{self, Guest, Wiring};
use crate::boot::qemu::{self, Qemu};
use crate::boot::BootError;

/// Where OSv reads its command line in the (raw view of the) disk image.
pub const CMDLINE_OFFSET: usize = osv_disk::CMDLINE_OFFSET;
/// The longest command line OSv reads (its `max_cmdline` is 1024 with the NUL).
pub const MAX_CMDLINE: usize = osv_disk::MAX_CMDLINE - 1;
/// The command line the base is booted with to receive the tree (the receiver's
/// default prefix `/`: the tree's paths land where they are in the tree).
pub const UPLOAD_CMDLINE: &str = "--rootfs=zfs /tools/cpiod.so";
/// The guest port cpiod listens on (its default).
pub const RECEIVER_PORT: u16 = 10000;
/// What cpiod prints once it listens.
pub const RECEIVER_READY: &str = "Waiting for connection from host";
/// What cpiod prints after it extracted everything and synced.
pub const RECEIVER_DONE: &str = "cpiod finished";

/// How long each step may take, and the guest's size.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From qemu's start until the receiver listens (OSv boots in about 5 s under TCG).
    pub ready: Duration,
    /// From the receiver listening until the tree is sent, the receiver has closed and
    /// qemu has exited.
    pub finish: Duration,
    /// Guest memory in MiB (ZFS wants some: OSv's own build gives its zfs_builder 512).
    pub memory_mib: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            ready: Duration::from_secs(120),
            finish: Duration::from_secs(600),
            memory_mib: 512,
        }
    }
}

/// Where the cpio stream goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Receiver {
    /// The guest's cpiod, through qemu's port forward.
    #[default]
    Guest,
    /// Another listener standing in for the guest's receiver (tests: one that misbehaves,
    /// which OSv's cannot be made to). The VM still boots and must still announce its
    /// receiver; only the connection goes elsewhere.
    StandIn(SocketAddr),
}

/// A finished upload.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The image at the destination (raw).
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// Bytes of cpio sent.
    pub bytes_sent: u64,
    /// From qemu's start until it exited.
    pub guest_time: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("OSv command line {cmdline:?}: {reason}")]
    Cmdline { cmdline: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("copying the base image {base} for {image} with qemu-img failed ({status}): {stderr}")]
    Convert {
        base: PathBuf,
        image: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("starting qemu for {image}: {source}")]
    Qemu {
        image: PathBuf,
        #[source]
        source: BootError,
    },
    #[error(
        "qemu exited ({status}) before the upload into {image} finished (port {port}, {bytes_sent} \
         bytes sent); qemu: {stderr}; console: {console}"
    )]
    QemuExited {
        image: PathBuf,
        port: u16,
        status: String,
        bytes_sent: u64,
        stderr: String,
        console: String,
    },
    #[error(
        "the receiver in {image} did not listen within {waited:?} (no \"Waiting for connection from host\" on \
         the console; port {port}); console: {console}"
    )]
    NotReady {
        image: PathBuf,
        port: u16,
        waited: Duration,
        console: String,
    },
    #[error("connecting to the receiver at {addr} for {image} (tried for {waited:?}): {source}")]
    Connect {
        image: PathBuf,
        addr: SocketAddr,
        waited: Duration,
        #[source]
        source: io::Error,
    },
    #[error(
        "sending the tree to the receiver at {addr} failed after {bytes_sent} bytes: {source}"
    )]
    Send {
        addr: SocketAddr,
        bytes_sent: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "the receiver at {addr} closed before the archive's end ({bytes_sent} of its bytes sent)"
    )]
    ClosedEarly { addr: SocketAddr, bytes_sent: u64 },
    #[error(
        "the receiver in the guest failed after {bytes_sent} bytes (an entry it could not \
         write?); console: {console}"
    )]
    ReceiverFailed { bytes_sent: u64, console: String },
    #[error(
        "the receiver at {addr} did not confirm the archive ({bytes_sent} bytes sent) by closing \
         cleanly: {source}"
    )]
    Unconfirmed {
        addr: SocketAddr,
        bytes_sent: u64,
        #[source]
        source: io::Error,
    },
    #[error("archiving the tree: {0}")]
    Archive(#[source] CpioError),
    #[error(
        "the guest writing {image} did not {what} within {waited:?} (port {port}, {bytes_sent} \
         bytes sent); console: {console}"
    )]
    Timeout {
        image: PathBuf,
        port: u16,
        what: &'static str,
        waited: Duration,
        bytes_sent: u64,
        console: String,
    },
    #[error(
        "the guest writing {image} powered off without its receiver saying \"cpiod finished\" \
         ({bytes_sent} bytes sent); console: {console}"
    )]
    Unfinished {
        image: PathBuf,
        bytes_sent: u64,
        console: String,
    },
    #[error(transparent)]
    Output(#[from] OutputError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UploadError + '_ {
    move |source| UploadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a command line OSv can read from the image ([`osv_disk::check_cmdline`]: no
/// NUL, at most [`MAX_CMDLINE`] bytes) and that it runs something.
pub fn check_cmdline(cmdline: &str) -> Result<(), UploadError> {
    let bad = |reason: String| UploadError::Cmdline {
        cmdline: cmdline.to_string(),
        reason,
    };
    if cmdline.trim().is_empty() {
        return Err(bad("is empty: OSv would run nothing".into()));
    }
    osv_disk::check_cmdline(cmdline).map_err(|e| bad(e.to_string()))
}

/// Writes `cmdline` (checked) at byte [`CMDLINE_OFFSET`] of the raw image `image`
/// ([`osv_disk::set_cmdline`]).
pub fn write_cmdline(image: &Path, cmdline: &str) -> Result<(), UploadError> {
    check_cmdline(cmdline)?;
    osv_disk::set_cmdline(image, cmdline).map_err(|e| UploadError::Cmdline {
        cmdline: cmdline.to_string(),
        reason: e.to_string(),
    })
}

/// Uploads `tree` into a copy of the OSv base image `base` and writes the result, with
/// `cmdline` as its command line, to `dest` (a raw image), as the module doc says. On
/// error nothing is left beside `dest` and a previous `dest` is unchanged.
pub fn upload(
    base: &Path,
    tree: &Tree,
    dest: &Path,
    cmdline: &str,
    limits: &Limits,
    receiver: Receiver,
) -> Result<Uploaded, UploadError> {
    check_cmdline(cmdline)?;
    let dir = output::parent_dir(dest);
    // Deleted when dropped: on every error path below.
    let tmp = output::named_temp_in(dir)?;
    let image = tmp.path().to_path_buf();
    copy_base(base, &image, dest)?;
    write_cmdline(&image, UPLOAD_CMDLINE)?;
    let work = tempfile::Builder::new()
        .prefix("beambake-osv-upload-")
        .tempdir()
        .map_err(io_err(&std::env::temp_dir()))?;
    let (bytes_sent, guest_time) = run_guest(&image, dest, tree, limits, receiver, work.path())?;
    write_cmdline(&image, cmdline)?;
    let written = output::commit_named(tmp, dest, 0o644, Clobber::Replace)?;
    Ok(Uploaded {
        path: written.path,
        size: written.size,
        sha256: written.sha256,
        bytes_sent,
        guest_time,
    })
}

/// `qemu-img convert` of `base` (qcow2 when it starts with qcow2's magic, else raw) to
/// the raw image `image` (sparse), the temp copy of `dest` (which errors name).
fn copy_base(base: &Path, image: &Path, dest: &Path) -> Result<(), UploadError> {
    let mut magic = [0u8; 4];
    let n = fs::File::open(base)
        .and_then(|mut f| f.read(&mut magic))
        .map_err(io_err(base))?;
    let format = if n == 4 && magic == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    };
    let out = Command::new("qemu-img")
        .args(["convert", "-f", format, "-O", "raw"])
        .arg(base)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| UploadError::Convert {
            base: base.to_path_buf(),
            image: dest.to_path_buf(),
            status: "not started".into(),
            stderr: format!("qemu-img: {source} (install qemu-utils)"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(UploadError::Convert {
        base: base.to_path_buf(),
        image: dest.to_path_buf(),
        status: status_text(out.status),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Boots `image` (the temp copy; errors name `dest`, the image it becomes), sends `tree`
/// to its receiver (or the stand-in) and waits for the guest to power off; the bytes
/// sent and the guest's run time. The VM is killed on every error path (its [`Guest`] is
/// dropped).
fn run_guest(
    image: &Path,
    dest: &Path,
    tree: &Tree,
    limits: &Limits,
    receiver: Receiver,
    work: &Path,
) -> Result<(u64, Duration), UploadError> {
    let console = work.join("console.txt");
    let stderr_log = work.join("qemu.log");
    fs::write(&console, b"").map_err(io_err(&console))?;
    let port = free_port().map_err(io_err(Path::new("127.0.0.1:0")))?;
    let stderr = fs::File::create(&stderr_log).map_err(io_err(&stderr_log))?;
    let mut cmd = command(image, port, limits.memory_mib, &console);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let mut g = Guest::spawn(
        Arc::new(Qemu::Osv),
        cmd,
        &console,
        Wiring {
            own_group: true,
            ..Wiring::default()
        },
    )
    .map_err(|source| UploadError::Qemu {
        image: dest.to_path_buf(),
        source,
    })?;
    let exited = |g: &mut Guest<Qemu>, st: ExitStatus, bytes_sent: u64| UploadError::QemuExited {
        image: dest.to_path_buf(),
        port,
        status: status_text(st),
        bytes_sent,
        stderr: or_nothing(guest::tail(&stderr_log, 5)),
        console: or_nothing(g.console_tail(15)),
    };

    // Step 4 (module doc): the receiver listens; connect, send, half-close, wait.
    let ready_by = g.started + limits.ready;
    let mut pause = Backoff::new();
    loop {
        if let Some(st) = g.exited() {
            return Err(exited(&mut g, st, 0));
        }
        if fs::read(&console)
            .map(|c| contains(&c, RECEIVER_READY.as_bytes()))
            .unwrap_or(false)
        {
            break;
        }
        if !pause.sleep_before(ready_by) {
            return Err(UploadError::NotReady {
                image: dest.to_path_buf(),
                port,
                waited: limits.ready,
                console: or_nothing(g.console_tail(15)),
            });
        }
    }

    // Connect, send, half-close, wait for the receiver to close.
    let finish_by = Instant::now() + limits.finish;
    let addr = match receiver {
        Receiver::Guest => SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Receiver::StandIn(a) => a,
    };
    let connect_start = Instant::now();
    let conn =
        connect(addr, finish_by.min(connect_start + limits.ready)).map_err(|source| {
            match g.exited() {
                Some(st) => exited(&mut g, st, 0),
                None => UploadError::Connect {
                    image: dest.to_path_buf(),
                    addr,
                    waited: connect_start.elapsed(),
                    source,
                },
            }
        })?;
    // OSv prints this when a program (here cpiod) aborts; the guest then halts without
    // powering off and without closing the connection.
    let console_path = console.clone();
    let mut watch = |bytes_sent: u64| {
        let log = fs::read(&console_path).unwrap_or_default();
        if contains(&log, b"Aborted") || contains(&log, b"[backtrace]") {
            return Some(UploadError::ReceiverFailed {
                bytes_sent,
                console: String::from_utf8_lossy(&log)
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
        None
    };
    let sent = send_tree_watched(conn, tree, finish_by, &mut watch);
    let bytes_sent = match sent {
        Ok(n) => n,
        Err(e) => {
            // A receiver gone because qemu died says so.
            let brief = Instant::now() + Duration::from_millis(500);
            return Err(match g.wait_until(brief) {
                Some(st) => exited(&mut g, st, sent_bytes(&e)),
                None => e,
            });
        }
    };

    // Step 5: the guest syncs and powers off by itself.
    let Some(st) = g.wait_until(finish_by) else {
        return Err(UploadError::Timeout {
            image: dest.to_path_buf(),
            port,
            what: "power off after the upload",
            waited: limits.finish,
            bytes_sent,
            console: or_nothing(g.console_tail(15)),
        });
    };
    let guest_time = g.started.elapsed();
    if !st.success() {
        return Err(exited(&mut g, st, bytes_sent));
    }
    let log = fs::read(&console).unwrap_or_default();
    if !contains(&log, RECEIVER_DONE.as_bytes()) {
        return Err(UploadError::Unfinished {
            image: dest.to_path_buf(),
            bytes_sent,
            console: or_nothing(g.console_tail(15)),
        });
    }
    Ok((bytes_sent, guest_time))
}

/// The bytes an error says were sent.
fn sent_bytes(e: &UploadError) -> u64 {
    match e {
        UploadError::Send { bytes_sent, .. }
        | UploadError::ClosedEarly { bytes_sent, .. }
        | UploadError::ReceiverFailed { bytes_sent, .. }
        | UploadError::Unconfirmed { bytes_sent, .. } => *bytes_sent,
        _ => 0,
    }
}

/// qemu's command: TCG, `-M pc`, the raw `image` on virtio-blk, user networking with
/// `127.0.0.1:port` forwarded to the guest's [`RECEIVER_PORT`], the serial console to
/// `console`; exits instead of rebooting (also when the firmware finds nothing to boot).
pub fn command(image: &Path, port: u16, memory_mib: u32, console: &Path) -> Command {
    let mut c = Command::new(qemu::program());
    c.args(["-M", "pc", "-accel", "tcg", "-cpu", "qemu64"]);
    c.args(["-m", &memory_mib.to_string(), "-smp", "1"]);
    c.args(["-nodefaults", "-no-user-config", "-display", "none"]);
    // No boot device: the firmware "reboots" at once, and qemu exits.
    c.args(["-no-reboot", "-boot", "reboot-timeout=0"]);
    c.args(["-device", "virtio-blk-pci,drive=hd0"]);
    c.arg("-drive").arg(format!(
        "file={},if=none,id=hd0,format=raw,cache=writeback",
        // qemu's option syntax: a comma in the path is doubled.
        image.display().to_string().replace(',', ",,")
    ));
    c.args([
        "-netdev",
        &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{RECEIVER_PORT}"),
        "-device",
        // No option ROM: nothing to boot from the network (a base that does not boot
        // ends at once instead of after iPXE's seconds of DHCP).
        "virtio-net-pci,netdev=n0,romfile=",
        "-device",
        "virtio-rng-pci",
    ]);
    c.arg("-serial").arg(format!("file:{}", console.display()));
    c
}

/// A port on 127.0.0.1 free a moment ago (qemu binds it; if something takes it first,
/// qemu exits at once saying so).
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Connects to `addr`, retrying with backoff until `deadline`; the last error.
fn connect(addr: SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    let mut pause = Backoff::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(10))) {
            Ok(s) => return Ok(s),
            Err(e) => {
                if !pause.sleep_before(deadline) {
                    return Err(e);
                }
            }
        }
    }
}

/// Streams `tree` as cpio newc over `conn`, half-closes it and waits until the receiver
/// closes its side (it does once it has extracted and synced everything), all by
/// `deadline`; the bytes sent. A receiver that closes or resets the connection before
/// the archive's end, or answers the half-close with a reset, is an error.
pub fn send_tree(conn: TcpStream, tree: &Tree, deadline: Instant) -> Result<u64, UploadError> {
    send_tree_watched(conn, tree, deadline, &mut |_| None)
}

/// How often a blocked send or wait looks at `watch`.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// [`send_tree`], asking `watch` (with the bytes sent so far) every [`WATCH_EVERY`] while
/// a write or the wait for the receiver's close is blocked: an error from it ends the
/// upload at once (the guest crashed, qemu died) instead of at the deadline.
fn send_tree_watched(
    conn: TcpStream,
    tree: &Tree,
    deadline: Instant,
    watch: &mut dyn FnMut(u64) -> Option<UploadError>,
) -> Result<u64, UploadError> {
    let addr = conn
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut out = Counted {
        conn: &conn,
        sent: 0,
        deadline,
        failed: None,
        watch,
        watched: None,
    };
    let written = cpio::write(tree, BufWriter::with_capacity(64 * 1024, &mut out))
        .and_then(|mut w| w.flush().map_err(CpioError::Write));
    if let Some(e) = out.watched.take() {
        return Err(e);
    }
    if let Err(e) = written {
        // The writer names the file it was copying when the copy fails on either side:
        // a failed send is the connection's.
        return Err(match (e, out.failed) {
            (CpioError::Write(source), _) => UploadError::Send {
                addr,
                bytes_sent: out.sent,
                source,
            },
            (_, Some((kind, message))) => UploadError::Send {
                addr,
                bytes_sent: out.sent,
                source: io::Error::new(kind, message),
            },
            (other, None) => UploadError::Archive(other),
        });
    }
    let sent = out.sent;
    let watch = out.watch;
    conn.shutdown(Shutdown::Write)
        .map_err(|source| UploadError::Send {
            addr,
            bytes_sent: sent,
            source,
        })?;
    let unconfirmed = |source| UploadError::Unconfirmed {
        addr,
        bytes_sent: sent,
        source,
    };
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(unconfirmed(io::ErrorKind::TimedOut.into()));
        }
        conn.set_read_timeout(Some(left.min(WATCH_EVERY)))
            .map_err(unconfirmed)?;
        match (&conn).read(&mut buf) {
            Ok(0) => return Ok(sent),
            // cpiod says nothing; anything it might say is not ours to judge.
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(e) = watch(sent) {
                    return Err(e);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(UploadError::ClosedEarly {
                    addr,
                    bytes_sent: sent,
                })
            }
            Err(e) => return Err(unconfirmed(e)),
        }
    }
}

/// The connection as a `Write` that counts what it sent, gives up at `deadline` and
/// remembers how it failed.
struct Counted<'a, 'w> {
    conn: &'a TcpStream,
    sent: u64,
    deadline: Instant,
    failed: Option<(io::ErrorKind, String)>,
    watch: &'w mut dyn FnMut(u64) -> Option<UploadError>,
    /// What `watch` said when it ended a write.
    watched: Option<UploadError>,
}

impl Write for Counted<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the upload's deadline passed while sending",
                ));
            }
            match self
                .conn
                .set_write_timeout(Some(left.min(WATCH_EVERY)))
                .and_then(|()| self.conn.write(buf))
            {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(w) = (self.watch)(self.sent) {
                        self.watched = Some(w);
                        break Err(io::Error::other("the upload was ended while sending"));
                    }
                }
                other => break other,
            }
        };
        match r {
            Ok(n) => {
                self.sent += n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.failed = Some((e.kind(), e.to_string()));
                }
                Err(e)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.conn.flush()
    }
}

/// Pauses growing from 20 ms to 1 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(20))
    }
    /// The next pause, and the one after it doubled (at most 1 s).
    fn next(&mut self) -> Duration {
        let p = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(1));
        p
    }
    /// Sleeps the next pause, cut short at `deadline`; false when the deadline has passed.
    fn sleep_before(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(self.next().min(deadline - now));
        true
    }
}

/// A log's tail for a message: "(nothing)" when empty (a firmware that found nothing to
/// boot prints nothing on the serial console).
fn or_nothing(text: String) -> String {
    if text.trim().is_empty() {
        "(nothing)".into()
    } else {
        text
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn status_text(st: ExitStatus) -> String {
    match st.code() {
        Some(c) => format!("exit status {c}"),
        None => st.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_checked_before_anything_is_written() {
        check_cmdline("--rootfs=zfs /hello").unwrap();
        check_cmdline(&"x".repeat(MAX_CMDLINE)).unwrap();
        let e = check_cmdline(&"x".repeat(MAX_CMDLINE + 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1024 bytes") && e.contains("max_cmdline"), "{e}");
        let e = check_cmdline("a\0b").unwrap_err().to_string();
        assert!(e.contains("NUL"), "{e}");
        assert!(check_cmdline("  ").is_err());
    }

    #[test]
    fn the_command_line_goes_at_byte_512_nul_terminated() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.img");
        let mut raw = vec![0xffu8; 4096];
        raw[510..512].copy_from_slice(&[0x55, 0xaa]);
        fs::write(&img, &raw).unwrap();
        write_cmdline(&img, "--rootfs=zfs /hello").unwrap();
        let b = fs::read(&img).unwrap();
        assert_eq!(b.len(), 4096, "not truncated");
        assert_eq!(&b[512..531], b"--rootfs=zfs /hello");
        // The rest of OSv's area is zeroed; nothing outside it changes.
        assert!(b[531..512 + 1024].iter().all(|&x| x == 0));
        assert_eq!(b[512 + 1024], 0xff);
        assert_eq!(&b[..512], &raw[..512]);
        // Too long: refused, the image untouched.
        let before = fs::read(&img).unwrap();
        assert!(write_cmdline(&img, &"y".repeat(2000)).is_err());
        assert_eq!(fs::read(&img).unwrap(), before);
    }

    #[test]
    fn qemu_runs_tcg_on_loopback_only() {
        let c = command(Path::new("/a,b/x.img"), 4242, 512, Path::new("/c/console"));
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let s = args.join(" ");
        assert!(s.contains("-accel tcg") && !s.contains("kvm"), "{s}");
        assert!(s.contains("hostfwd=tcp:127.0.0.1:4242-:10000"), "{s}");
        assert!(s.contains("file=/a,,b/x.img,if=none"), "{s}");
        assert!(s.contains("-serial file:/c/console"), "{s}");
        assert!(s.contains("-no-reboot"), "{s}");
    }

    fn tree(size: usize) -> Tree {
        let mut t = Tree::new(1_700_000_000);
        t.add_bytes("/x", vec![7u8; size], 0o644, "test").unwrap();
        t
    }

    #[test]
    fn the_tree_goes_as_the_cpio_writer_writes_it_and_the_receiver_closing_confirms() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let receiver = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut got = Vec::new();
            // Returns at our half-close; dropping `c` then closes: the confirmation.
            c.read_to_end(&mut got).unwrap();
            got
        });
        let t = tree(100_000);
        let deadline = Instant::now() + Duration::from_secs(30);
        let n = send_tree(TcpStream::connect(addr).unwrap(), &t, deadline).unwrap();
        let want = cpio::write(&t, Vec::new()).unwrap();
        assert_eq!(receiver.join().unwrap(), want);
        assert_eq!(n, want.len() as u64);
    }

    #[test]
    fn a_receiver_closing_early_is_a_send_error_with_the_bytes_sent() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut buf = [0u8; 100];
            c.read_exact(&mut buf).unwrap();
            // Closed with data unread: the connection is reset.
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let e =
            send_tree(TcpStream::connect(addr).unwrap(), &tree(16 << 20), deadline).unwrap_err();
        match &e {
            UploadError::Send { bytes_sent, .. } | UploadError::ClosedEarly { bytes_sent, .. } => {
                assert!(*bytes_sent >= 100 && *bytes_sent < 16 << 20, "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
    }

    #[test]
    fn backoff_grows_and_stops_at_the_deadline() {
        let mut b = Backoff::new();
        assert!(
            !b.sleep_before(Instant::now()),
            "a passed deadline: no sleep"
        );
        let ms: Vec<u128> = (0..8).map(|_| b.next().as_millis()).collect();
        assert_eq!(ms, [20, 40, 80, 160, 320, 640, 1000, 1000]);
    }
}
