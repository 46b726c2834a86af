//! Private networks for guests: a network (and PID) namespace held by a process, a tap
//! device inside it, addresses and links set with ioctls.
//!
//! Owns: entering the namespaces (`unshare` in a child before exec, with
//! `PR_SET_PDEATHSIG` so the kernel frees everything when the parent dies: no named
//! namespace, nothing to clean up by hand), creating the tap (held by an fd, gone with
//! it), configuring links, and trying namespaces in a throwaway child (`beambake doctor`).
//! Must not: start guests or run checks; it never touches the host's own network
//! namespace (every call that configures a link runs inside a namespace we made).

use std::ffi::CString;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

// The guest's init sets up links the same way: one ifreq/sockaddr helper for both.
#[path = "../../../../init/src/ifreq.rs"]
mod ifreq;
use ifreq::{ifreq, sockaddr_v4};

/// True when this process runs as root (namespaces and taps need no user namespace).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes `cmd`'s child die with its parent (SIGKILL) and, before exec, enter a new
/// network namespace and make its own children start a new PID namespace. Not root:
/// inside a new user namespace too, where the caller is mapped to root (enough for a
/// loopback and qemu's user networking, not for a tap).
pub fn sandboxed(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id() as libc::pid_t;
    let ns = Unshare::new(libc::CLONE_NEWNET | libc::CLONE_NEWPID);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            die_with_parent(parent)?;
            ns.enter()
        })
    }
}

/// Namespaces to enter in a child before exec, with what entering them as a user needs
/// (a user namespace mapping the caller to root) prepared before the fork: entering
/// allocates nothing.
struct Unshare {
    flags: libc::c_int,
    /// `(uid_map, gid_map)` when not root.
    maps: Option<(String, String)>,
}

impl Unshare {
    fn new(flags: libc::c_int) -> Unshare {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Unshare {
            flags,
            maps: (!is_root()).then(|| (format!("0 {uid} 1"), format!("0 {gid} 1"))),
        }
    }

    /// `unshare` (async-signal-safe: for `pre_exec`).
    fn enter(&self) -> io::Result<()> {
        let user = if self.maps.is_some() {
            libc::CLONE_NEWUSER
        } else {
            0
        };
        // SAFETY: plain syscall.
        if unsafe { libc::unshare(self.flags | user) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some((uid_map, gid_map)) = &self.maps {
            write_proc(b"/proc/self/setgroups\0", b"deny")?;
            write_proc(b"/proc/self/uid_map\0", uid_map.as_bytes())?;
            write_proc(b"/proc/self/gid_map\0", gid_map.as_bytes())?;
        }
        Ok(())
    }
}

/// Makes `cmd`'s child die with its parent (SIGKILL) and, before exec, enter a new network
/// namespace with nothing in it but its loopback, brought up: a release run on the host
/// (e.g. traced at build time) can listen and reach its epmd there and reach nothing
/// else. Not root: inside a new user namespace too. The namespace lives as long as the
/// child and whatever joins it ([`join_netns_of`]).
pub fn private_loopback(cmd: &mut Command) -> io::Result<&mut Command> {
    let parent = std::process::id() as libc::pid_t;
    let ns = Unshare::new(libc::CLONE_NEWNET);
    // Built before fork: nothing is allocated between fork and exec.
    let lo = ifreq("lo")?.ifr_name;
    // SAFETY: only async-signal-safe calls between fork and exec.
    Ok(unsafe {
        cmd.pre_exec(move || {
            die_with_parent(parent)?;
            ns.enter()?;
            // SAFETY: an all-zero ifreq is valid; only its name is set.
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_name = lo;
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
            if rc == 0 {
                req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req);
            }
            let err = io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
            Ok(())
        })
    })
}

/// Makes `cmd`'s child die with its parent and, before exec, join the network namespace
/// of the running process `pid` (one made by [`private_loopback`]), and its user namespace
/// when not root.
pub fn join_netns_of(cmd: &mut Command, pid: u32) -> io::Result<&mut Command> {
    let parent = std::process::id() as libc::pid_t;
    let open = |what: &str| std::fs::File::open(format!("/proc/{pid}/ns/{what}"));
    let user = if is_root() { None } else { Some(open("user")?) };
    let net = open("net")?;
    // SAFETY: only async-signal-safe calls between fork and exec; the files are moved into
    // the closure, so their fds stay open until the child execs (they are close-on-exec).
    Ok(unsafe {
        cmd.pre_exec(move || {
            die_with_parent(parent)?;
            if let Some(user) = &user {
                if libc::setns(user.as_raw_fd(), libc::CLONE_NEWUSER) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setns(net.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    })
}

/// open/write/close of a NUL-terminated path (async-signal-safe).
fn write_proc(path: &[u8], data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is NUL-terminated; plain syscalls.
    unsafe {
        let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        if n != data.len() as isize {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `cmd`'s child get SIGKILL when the spawning thread's process dies.
pub fn dies_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe { cmd.pre_exec(move || die_with_parent(parent)) }
}

fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl/getppid are async-signal-safe.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died before prctl took effect. (A child that starts a new
        // PID namespace sees its parent as 0.)
        let ppid = libc::getppid();
        if ppid != parent && ppid != 0 {
            libc::_exit(1);
        }
    }
    Ok(())
}

/// What [`try_namespaces`] attempts in its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NsTrial {
    /// A new network namespace and a tap inside it (what the sandbox needs as root).
    TapInNetns,
    /// A new user namespace with a network namespace (rootless networking).
    UserNetns,
}

/// Tries `trial` in a short-lived child (`true`, dying with us) that enters the new
/// namespaces before exec: they are held by that child only and vanish with it. The
/// error is the failing step's.
pub fn try_namespaces(trial: NsTrial) -> io::Result<()> {
    // The ifreq's name, copied into a fresh ifreq in the child (no allocation there).
    let name = ifreq("bbprobe0")?.ifr_name;
    let mut cmd = Command::new("true");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    dies_with_parent(&mut cmd);
    let step = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    // SAFETY: only async-signal-safe calls (unshare, open, ioctl, close) between fork and
    // exec; the interface name was checked before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let flags = match trial {
                NsTrial::TapInNetns => libc::CLONE_NEWNET,
                NsTrial::UserNetns => libc::CLONE_NEWUSER | libc::CLONE_NEWNET,
            };
            if libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            if trial == NsTrial::TapInNetns {
                let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut r: libc::ifreq = std::mem::zeroed();
                r.ifr_name = name;
                r.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
                let rc = libc::ioctl(fd, TUNSETIFF, &mut r);
                let e = io::Error::last_os_error();
                libc::close(fd);
                if rc != 0 {
                    return Err(e);
                }
            }
            Ok(())
        });
    }
    let what = match trial {
        NsTrial::TapInNetns => "unshare(CLONE_NEWNET) + tap on /dev/net/tun",
        NsTrial::UserNetns => "unshare(CLONE_NEWUSER | CLONE_NEWNET)",
    };
    let status = cmd.status().map_err(|e| step(what, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what}: the child ended with {status}"
        )))
    }
}

/// True when the current network namespace has no interface but `lo` (a fresh one).
/// Asks the kernel (`if_nameindex`, answered for the caller's namespace); `/sys/class/net`
/// would show the namespace sysfs was mounted in.
pub fn only_loopback() -> io::Result<bool> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut ok = true;
        let mut p = list;
        while (*p).if_index != 0 {
            let name = std::ffi::CStr::from_ptr((*p).if_name);
            if name.to_bytes() != b"lo" {
                ok = false;
            }
            p = p.add(1);
        }
        libc::if_freenameindex(list);
        Ok(ok)
    }
}

/// A tap device, alive as long as this fd.
pub struct Tap {
    pub fd: OwnedFd,
    pub name: String,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

impl Tap {
    /// Creates tap `name`; `vnet_hdr`: frames carry a virtio-net header (as qemu's
    /// vhost-less tap wants; User Mode Linux's fd transport wants plain frames).
    pub fn create(name: &str, vnet_hdr: bool) -> io::Result<Tap> {
        let path = CString::new("/dev/net/tun").map_err(io::Error::other)?;
        // SAFETY: valid C string; the fd is owned below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("/dev/net/tun: {e}")));
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 };
        // SAFETY: TUNSETIFF takes a pointer to an ifreq.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("TUNSETIFF {name}: {e}")));
        }
        Ok(Tap {
            fd,
            name: name.to_string(),
        })
    }
}

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl(sock: &OwnedFd, req: libc::c_ulong, ifr: &mut libc::ifreq, what: &str) -> io::Result<()> {
    // SAFETY: every request used here takes a pointer to an ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req, ifr as *mut libc::ifreq) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Sets `name`'s IPv4 address and prefix.
pub fn set_addr(name: &str, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(ip);
    ioctl(
        &sock,
        libc::SIOCSIFADDR,
        &mut req,
        &format!("set address of {name}"),
    )?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
    ioctl(
        &sock,
        libc::SIOCSIFNETMASK,
        &mut req,
        &format!("set netmask of {name}"),
    )
}

const SIOCBRADDBR: libc::c_ulong = 0x89a0;
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// Creates bridge `name` (it lives as long as the namespace).
pub fn add_bridge(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let c = CString::new(name).map_err(io::Error::other)?;
    ifreq(name)?; // name checks
                  // SAFETY: SIOCBRADDBR takes a NUL-terminated interface name.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCBRADDBR, c.as_ptr()) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("create bridge {name}: {e} (is the host kernel's bridge support loaded?)"),
        ));
    }
    Ok(())
}

/// Enslaves `port` to `bridge`.
pub fn bridge_add_port(bridge: &str, port: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let c = CString::new(port).map_err(io::Error::other)?;
    // SAFETY: plain name-to-index lookup.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req = ifreq(bridge)?;
    req.ifr_ifru.ifru_ifindex = index as libc::c_int;
    ioctl(
        &sock,
        SIOCBRADDIF,
        &mut req,
        &format!("add {port} to bridge {bridge}"),
    )
}

/// Sets `name`'s Ethernet address (while it is down).
pub fn set_hwaddr(name: &str, mac: [u8; 6]) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    // SAFETY: writing the hwaddr member of a zeroed union.
    unsafe {
        req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
            *d = s as libc::c_char;
        }
    }
    ioctl(
        &sock,
        libc::SIOCSIFHWADDR,
        &mut req,
        &format!("set the address of {name}"),
    )
}

/// Brings `name` up.
pub fn link_up(name: &str) -> io::Result<()> {
    let sock = inet_socket()?;
    let mut req = ifreq(name)?;
    ioctl(
        &sock,
        libc::SIOCGIFFLAGS,
        &mut req,
        &format!("flags of {name}"),
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(
        &sock,
        libc::SIOCSIFFLAGS,
        &mut req,
        &format!("bring {name} up"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_rejects_bad_names() {
        assert!(ifreq("").is_err());
        assert!(ifreq("a-very-long-interface-name").is_err());
        assert!(ifreq("tap0").is_ok());
    }
}
