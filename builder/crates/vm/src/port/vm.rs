//! One VM driven from Erlang (`beambake port DIR`, opened by `beambake_vm`): the VM of a
//! built microvm or uml image, started through the one guest-lifecycle type
//! ([`Guest`]), its console, its NIC's Ethernet frames and the init's control line
//! relayed as terms over the port's stdin/stdout ([`super::codec`]).
//!
//! From Erlang: `{console, Bytes}` (written to the console as they are), `{frame,
//! Frame}` (into the NIC), `{ctl, Line}` (a control request, `beambake_contract::control`),
//! `stop` (the init is asked to power off; killed after the stop bound). To Erlang:
//! `{started, [{os_pid, P}, {mac, M}, {accel, A}]}` once, then `{console, Line}` per
//! console line, `{frame, Frame}` per frame the guest sends, `{ctl, Line}` per control
//! reply, and last `{exit, Status}` (the guest's own status from its init, or `{signal,
//! N}` / `{vmm, Code}` when the VM ended another way). When stdin closes (the Erlang
//! side is gone) the VM is killed at once.
//!
//! Frames go through a datagram socket pair (qemu `-netdev socket,fd=3`, UML's `fd`
//! vector transport): no tap, no root, no namespace. Console lines go through the VMM's
//! stdin/stdout, the control line through a stream socket pair on the second serial line.
//!
//! Owns: the relay threads and the port's end of the VM's life. Must not: build images,
//! choose the accelerator (its caller does) or outlive its VM (nor let the VM outlive it).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use beambake_contract::cmdline::Ipv4Cidr;
use beambake_contract::control;
use beambake_recipe::{NetMode, Target};

use super::codec::{self, Term};
use crate::boot::guest::{Guest, Wiring};
use crate::boot::qemu::{Accelerator, Console};
use crate::boot::vmm::vmm_for;
use crate::boot::{BootError, BootPlan};

/// What the Erlang side chose for its VM.
#[derive(Debug, Clone, Default)]
pub struct PortOpts {
    /// The address set at boot (with its gateway); none: the NIC stays unconfigured
    /// until a control `ifconfig`.
    pub ip: Option<(Ipv4Cidr, Option<Ipv4Addr>)>,
    /// The NIC's MAC address; by default a random locally administered one.
    pub mac: Option<[u8; 6]>,
    /// The node name (`NAME@HOST`), instead of the image's `NAME@IP`.
    pub node: Option<String>,
    /// How long a `stop` waits for the guest's clean power-off before killing it.
    pub stop_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("{dir}: beambake port drives microvm and uml images; this one is {target}")]
    Target { dir: String, target: String },
    #[error("beambake port: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> PortError {
    move |source| PortError::Io { what, source }
}

/// `52:54:00:xx:xx:xx` from the kernel's random source (locally administered, unicast).
pub fn random_mac() -> [u8; 6] {
    let mut b = [0u8; 3];
    // SAFETY: getrandom into a valid buffer of its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Still distinct per VM of one host: the process id and the clock.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id();
        b = [(t >> 16) as u8, (t >> 8) as u8, t as u8];
    }
    [0x52, 0x54, 0x00, b[0], b[1], b[2]]
}

pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| {
            (p.len() == 2)
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// The plan of one port VM: frames on a socket, the control line, no address unless
/// asked, its own console log in `run_dir`.
pub fn port_plan(mut plan: BootPlan, dir: &Path, opts: &PortOpts) -> Result<BootPlan, PortError> {
    if !matches!(plan.target, Target::Microvm | Target::Uml) {
        return Err(PortError::Target {
            dir: dir.display().to_string(),
            target: format!("{:?}", plan.target).to_lowercase(),
        });
    }
    // Many port VMs may run from one image at once: each its own name (UML's run dir
    // and umid), and none takes the image's per-instance data disk.
    plan.name = format!("{}-port{}", plan.name, std::process::id());
    plan.data = None;
    plan.net.mode = NetMode::Socket;
    plan.control = true;
    plan.mac = Some(opts.mac.unwrap_or_else(random_mac));
    match opts.ip {
        Some((cidr, gw)) => {
            plan.net.guests = vec![cidr.addr];
            plan.net.prefix = cidr.prefix;
            // No gateway asked for: the guest's own address (the route is on-link).
            plan.net.host = gw.unwrap_or(cidr.addr);
        }
        None => plan.net.guests = vec![Ipv4Addr::UNSPECIFIED],
    }
    Ok(plan)
}

/// The one VM of a port plan: its console log in `run_dir`, its node name from `opts`
/// (none when it has neither a name from `opts` nor an address to name it by).
pub fn port_instance(
    plan: &BootPlan,
    dir: &Path,
    run_dir: &Path,
    opts: &PortOpts,
) -> Result<crate::boot::Instance, PortError> {
    let mut inst = plan
        .instances(dir)
        .into_iter()
        .next()
        .ok_or_else(|| BootError::Net("the boot plan lists no guest address".into()))?;
    inst.console_log = run_dir.join("console.log");
    if opts.node.is_some() {
        inst.node = opts.node.clone();
    } else if inst.ip.is_unspecified() {
        // No address to name it by: the image's own node name.
        inst.node = None;
    }
    Ok(inst)
}

/// What the VM's threads tell the main loop.
enum Event {
    /// A term from Erlang that the main loop acts on.
    Stop,
    /// Erlang closed stdin.
    Eof,
    /// A bad packet from Erlang.
    Bad(String),
}

type Out = Arc<Mutex<Box<dyn Write + Send>>>;

fn send(out: &Out, t: &Term) {
    if let Ok(mut w) = out.lock() {
        // A closed stdout means Erlang is gone: stdin's end tells the main loop.
        let _ = codec::write_term(&mut *w, t);
    }
}

/// The Ethernet side of a port VM: a datagram socket, connected (a socket pair) or
/// sending to the VM's own socket path (qemu's `-netdev dgram` on Unix sockets).
pub struct Frames {
    pub sock: UnixDatagram,
    /// Where frames for the VM go when `sock` is not connected.
    pub peer: Option<PathBuf>,
}

impl Frames {
    fn try_clone(&self) -> io::Result<Frames> {
        Ok(Frames {
            sock: self.sock.try_clone()?,
            peer: self.peer.clone(),
        })
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        match &self.peer {
            Some(p) => self.sock.send_to(frame, p).map(|_| ()),
            None => self.sock.send(frame).map(|_| ()),
        }
    }
}

/// A running VM's I/O, as the relay uses it.
pub struct Wires {
    /// Bytes typed on the console.
    pub console_in: Box<dyn Write + Send>,
    /// The console's output.
    pub console_out: Box<dyn Read + Send>,
    /// Where the relay copies the console (for a VMM that does not log it itself).
    pub console_log: Option<std::fs::File>,
    pub frames: Frames,
    /// The init's control line.
    pub ctl: UnixStream,
}

/// A VM the port drives, whatever runs it (a VMM process here, or libvirt).
pub trait PortGuest {
    /// What `{started, Info}` says of it besides `mac` and `accel` (e.g. `os_pid`).
    fn info(&self) -> Vec<Term>;
    /// Whether it has ended.
    fn exited(&mut self) -> bool;
    /// The VMM's own clean stop too, where it has one; the init is asked already.
    fn request_stop(&mut self);
    /// Ends it now.
    fn kill(&mut self);
    /// Once ended and its console read to the end: the status `{exit, Status}` carries
    /// (the guest's own exit code, or `{signal, N}` / `{vmm, Code}`).
    fn status(&mut self) -> Term;
    /// Removes what it left behind.
    fn clean_up(&mut self) {}
}

/// A VM of a VMM process started here through [`Guest`].
struct LocalGuest<'a> {
    guest: Guest,
    vmm: Arc<dyn crate::boot::vmm::Vmm>,
    dir: &'a Path,
}

impl PortGuest for LocalGuest<'_> {
    fn info(&self) -> Vec<Term> {
        vec![codec::tagged(
            "os_pid",
            codec::int(i64::from(self.guest.pid())),
        )]
    }

    fn exited(&mut self) -> bool {
        self.guest.exited().is_some()
    }

    fn request_stop(&mut self) {
        self.guest.request_stop();
    }

    fn kill(&mut self) {
        self.guest.kill();
    }

    fn status(&mut self) -> Term {
        let code = self.guest.exited().and_then(|s| s.code());
        match (self.guest.guest_status(), code) {
            (Some(n), _) => codec::int(i64::from(n)),
            (None, Some(code)) => codec::tagged("vmm", codec::int(i64::from(code))),
            (None, None) => {
                use std::os::unix::process::ExitStatusExt;
                let sig = self.guest.exited().and_then(|s| s.signal()).unwrap_or(0);
                codec::tagged("signal", codec::int(i64::from(sig)))
            }
        }
    }

    fn clean_up(&mut self) {
        self.vmm.clean_up(self.dir);
    }
}

/// Runs VM 1 of `plan` (files in `dir`, run files in `run_dir`) until it ends or Erlang
/// goes away; returns the status it reported last.
pub fn run(
    plan: &BootPlan,
    dir: &Path,
    run_dir: &Path,
    accel: Accelerator,
    input: Box<dyn Read + Send>,
    output: Box<dyn Write + Send>,
    opts: &PortOpts,
) -> Result<Term, PortError> {
    let vmm = vmm_for(plan)?;
    vmm.check(plan, dir)?;
    let inst = port_instance(plan, dir, run_dir, opts)?;
    let (frames_vm, frames) = UnixDatagram::pair().map_err(io_err("a socket for frames"))?;
    let (ctl_vm, ctl) = UnixStream::pair().map_err(io_err("a socket for the control line"))?;
    let frames_vm = OwnedFd::from(frames_vm);
    let ctl_vm = OwnedFd::from(ctl_vm);
    let cmd = vmm.command(
        plan,
        dir,
        &inst,
        accel,
        Console::Terminal(&inst.console_log),
    )?;
    let mut guest = Guest::spawn(
        vmm.clone(),
        cmd,
        &inst.console_log,
        Wiring {
            tap: Some(&frames_vm),
            control: Some(&ctl_vm),
            piped: true,
            ..Wiring::default()
        },
    )?;
    drop(frames_vm);
    drop(ctl_vm);
    let (vm_in, vm_out) = guest
        .take_stdio()
        .ok_or_else(|| BootError::Net("the VM's console pipes are missing".into()))?;
    // A VMM that cannot log its own console (UML) gets its log written here.
    let console_log = if vmm.tees_console() {
        std::fs::File::create(&inst.console_log).ok()
    } else {
        None
    };
    let wires = Wires {
        console_in: Box::new(vm_in),
        console_out: Box::new(vm_out),
        console_log,
        frames: Frames {
            sock: frames,
            peer: None,
        },
        ctl,
    };
    let label = vmm.accelerator().label(accel);
    let mut local = LocalGuest { guest, vmm, dir };
    relay(
        &mut local,
        wires,
        plan.mac,
        label,
        input,
        output,
        opts.stop_timeout,
    )
}

/// Relays between Erlang (`input`, `output`) and the running `guest` through `wires`
/// until the guest ends; sends `{exit, Status}` last and returns that status. Erlang's
/// `stop` asks the init to power off (and the VMM, [`PortGuest::request_stop`]), and
/// kills after `stop_timeout`; the end of `input` kills at once.
pub fn relay(
    guest: &mut dyn PortGuest,
    wires: Wires,
    mac: Option<[u8; 6]>,
    accel_label: &str,
    input: Box<dyn Read + Send>,
    output: Box<dyn Write + Send>,
    stop_timeout: Duration,
) -> Result<Term, PortError> {
    let Wires {
        console_in: mut vm_in,
        console_out: vm_out,
        console_log,
        frames,
        ctl,
    } = wires;
    let out: Out = Arc::new(Mutex::new(output));
    let mac = mac.map(|m| format_mac(&m)).unwrap_or_default();
    let mut info = guest.info();
    info.push(codec::tagged("mac", codec::binary(mac.as_bytes())));
    info.push(codec::tagged("accel", codec::atom(accel_label)));
    send(&out, &codec::tagged("started", codec::list(info)));

    // The VM's console, frames and control replies to Erlang.
    let console = {
        let out = out.clone();
        std::thread::spawn(move || relay_lines(vm_out, "console", &out, console_log))
    };
    {
        let out = out.clone();
        let frames = frames.try_clone().map_err(io_err("the frames socket"))?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = frames.sock.recv(&mut buf) {
                send(&out, &codec::tagged("frame", codec::binary(&buf[..n])));
            }
        });
    }
    // Control requests wait for the init's `0 ready`: a serial line drops what arrives
    // before the guest opens it.
    let ctl_w = CtlWriter::new(ctl.try_clone().map_err(io_err("the control socket"))?);
    {
        let out = out.clone();
        let ctl_w = ctl_w.clone();
        let ctl = ctl.try_clone().map_err(io_err("the control socket"))?;
        std::thread::spawn(move || {
            relay_lines_with(ctl, "ctl", &out, None, |line| {
                if line == control::ready_line().as_bytes() {
                    ctl_w.ready();
                }
            })
        });
    }
    // Erlang's requests: console bytes, frames and control lines pass at once; the rest
    // goes to the main loop.
    let (tx, rx) = mpsc::channel();
    drop(ctl);
    std::thread::spawn(move || {
        let mut input = BufReader::new(input);
        loop {
            let t = match codec::read_term(&mut input) {
                Ok(Some(t)) => t,
                Ok(None) => {
                    let _ = tx.send(Event::Eof);
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Event::Bad(e.to_string()));
                    let _ = tx.send(Event::Eof);
                    return;
                }
            };
            let (tag, body) = match codec::as_tuple(&t) {
                Some([tag, body]) => (codec::as_atom(tag), codec::as_bytes(body)),
                _ => (codec::as_atom(&t), None),
            };
            let _ = match (tag, body) {
                (Some("console"), Some(b)) => vm_in.write_all(&b).and_then(|()| vm_in.flush()),
                (Some("frame"), Some(b)) => frames.send(&b),
                (Some("ctl"), Some(b)) => ctl_w.write_line(b),
                (Some("stop"), None) => {
                    // The init stops the release as on SIGTERM and powers off (its reply,
                    // `0 ok`, reaches Erlang like any other).
                    let _ = ctl_w.write_line(b"0 poweroff".to_vec());
                    tx.send(Event::Stop).map_err(io::Error::other)
                }
                _ => tx
                    .send(Event::Bad(format!("unknown request {t}")))
                    .map_err(io::Error::other),
            };
        }
    });

    let mut stop_by: Option<Instant> = None;
    loop {
        if guest.exited() {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Event::Eof) => guest.kill(),
            Ok(Event::Stop) if stop_by.is_none() => {
                guest.request_stop();
                stop_by = Some(Instant::now() + stop_timeout);
            }
            Ok(Event::Stop) => {}
            Ok(Event::Bad(msg)) => {
                send(&out, &codec::tagged("error", codec::binary(msg.as_bytes())))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => guest.kill(),
        }
        if stop_by.is_some_and(|d| Instant::now() >= d) {
            guest.kill();
        }
    }
    // The console's last lines before the exit.
    let _ = console.join();
    let status = guest.status();
    send(&out, &codec::tagged("exit", status.clone()));
    guest.clean_up();
    Ok(status)
}

/// The control line's writer: lines queue until the init says it is ready.
#[derive(Clone)]
struct CtlWriter(Arc<Mutex<(UnixStream, Option<Queued>)>>);

/// Lines written before the init was ready.
type Queued = Vec<Vec<u8>>;

impl CtlWriter {
    fn new(sock: UnixStream) -> CtlWriter {
        CtlWriter(Arc::new(Mutex::new((sock, Some(Vec::new())))))
    }

    /// Writes `line` (a newline added), or queues it while the init is not ready.
    fn write_line(&self, mut line: Vec<u8>) -> io::Result<()> {
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        let mut g = self
            .0
            .lock()
            .map_err(|_| io::Error::other("control writer"))?;
        let (sock, queue) = &mut *g;
        match queue {
            Some(q) => {
                q.push(line);
                Ok(())
            }
            None => sock.write_all(&line),
        }
    }

    /// The init is listening: the queued lines go now, later ones at once.
    fn ready(&self) {
        if let Ok(mut g) = self.0.lock() {
            let (sock, queue) = &mut *g;
            for line in queue.take().unwrap_or_default() {
                let _ = sock.write_all(&line);
            }
        }
    }
}

fn relay_lines(r: impl Read, tag: &str, out: &Out, log: Option<std::fs::File>) {
    relay_lines_with(r, tag, out, log, |_| {})
}

/// Sends each line read from `r` as `{Tag, Line}` (CR and LF stripped; a last line
/// without its newline too, when `r` ends), copied to `log` as read.
fn relay_lines_with(
    r: impl Read,
    tag: &str,
    out: &Out,
    mut log: Option<std::fs::File>,
    mut seen: impl FnMut(&[u8]),
) {
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if let Some(f) = log.as_mut() {
                    let _ = f.write_all(&line);
                }
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                seen(&line);
                send(out, &codec::tagged(tag, codec::binary(&line)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_unicast_and_parse_back() {
        let m = random_mac();
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
        assert_eq!(parse_mac("52:54:00:bb:00:1"), None);
        assert_eq!(parse_mac("52:54:00:bb:00:zz"), None);
        assert_eq!(parse_mac("52:54:00:bb:00"), None);
    }
}
