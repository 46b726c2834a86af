//! The guest's network identity: interface flags, IPv4 address and netmask,
//! the default route (all with classic ioctls on an AF_INET datagram
//! socket), the hostname and the hosts file.
//!
//! Owns: every `unsafe` needed for `ifreq`/`rtentry`; each ioctl is wrapped in
//! a small safe function returning `io::Result`.
//!
//! Must not: parse the command line (it gets typed values), decide what is
//! fatal, or use netlink/DHCP/IPv6: one static IPv4 address and gateway is
//! the whole feature.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use beambake_contract::paths::{ETC_HOSTS, RUN_HOSTS};

use crate::ifreq::{ifreq, sockaddr_v4};

/// An AF_INET datagram socket used only as an ioctl handle.
pub struct Sock(OwnedFd);

fn v4_of_sockaddr(sa: &libc::sockaddr) -> Option<Ipv4Addr> {
    if libc::c_int::from(sa.sa_family) != libc::AF_INET {
        return None;
    }
    // SAFETY: same size and layout argument as in `sockaddr_v4`.
    let sin = unsafe { std::mem::transmute::<libc::sockaddr, libc::sockaddr_in>(*sa) };
    Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
}

impl Sock {
    pub fn new() -> io::Result<Sock> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(Sock(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// ioctl with a pointer to `arg`; the request must be one whose argument
    /// is a `T` (checked by the callers below, which are the only users).
    fn ioctl<T>(&self, req: libc::Ioctl, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is a valid, writable T of the type `req` expects.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), req, arg as *mut T) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Whether the interface exists (SIOCGIFINDEX).
    pub fn exists(&self, name: &str) -> io::Result<bool> {
        let mut req = ifreq(name)?;
        match self.ioctl(libc::SIOCGIFINDEX, &mut req) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn flags(&self, name: &str) -> io::Result<libc::c_short> {
        let mut req = ifreq(name)?;
        self.ioctl(libc::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS fills the ifru_flags member of the union.
        Ok(unsafe { req.ifr_ifru.ifru_flags })
    }

    pub fn set_flags(&self, name: &str, flags: libc::c_short) -> io::Result<()> {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_flags = flags;
        self.ioctl(libc::SIOCSIFFLAGS, &mut req)
    }

    /// Set IFF_UP (keeping the other flags).
    pub fn up(&self, name: &str) -> io::Result<()> {
        let flags = self.flags(name)?;
        let up = libc::IFF_UP as libc::c_short;
        if flags & up != 0 {
            return Ok(());
        }
        self.set_flags(name, flags | up)
    }

    /// The primary IPv4 address, or `None` if the interface has none.
    pub fn addr(&self, name: &str) -> io::Result<Option<Ipv4Addr>> {
        let mut req = ifreq(name)?;
        match self.ioctl(libc::SIOCGIFADDR, &mut req) {
            // SAFETY: SIOCGIFADDR fills the ifru_addr member of the union.
            Ok(()) => Ok(v4_of_sockaddr(unsafe { &req.ifr_ifru.ifru_addr })),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn set_addr(&self, name: &str, addr: Ipv4Addr) -> io::Result<()> {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
        self.ioctl(libc::SIOCSIFADDR, &mut req)
    }

    pub fn set_netmask(&self, name: &str, mask: Ipv4Addr) -> io::Result<()> {
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_netmask = sockaddr_v4(mask);
        self.ioctl(libc::SIOCSIFNETMASK, &mut req)
    }

    /// `route add default gw GW` (SIOCADDRT). An identical existing route
    /// (EEXIST) counts as success.
    pub fn add_default_route(&self, gw: Ipv4Addr) -> io::Result<()> {
        // SAFETY: rtentry is a plain C struct for which all-zero is valid
        // (including the null `rt_dev`: "any device").
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_genmask = sockaddr_v4(Ipv4Addr::UNSPECIFIED);
        rt.rt_gateway = sockaddr_v4(gw);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        match self.ioctl(libc::SIOCADDRT, &mut rt) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Poll (every `step`) until the interface exists or `timeout` passes.
    pub fn wait_for(&self, name: &str, timeout: Duration, step: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exists(name)? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(step);
        }
    }
}

/// Bring `lo` up; give it 127.0.0.1/8 if the kernel did not.
pub fn setup_loopback(sock: &Sock) -> io::Result<()> {
    sock.up("lo")?;
    if sock.addr("lo")?.is_none() {
        sock.set_addr("lo", Ipv4Addr::LOCALHOST)?;
        sock.set_netmask("lo", Ipv4Addr::new(255, 0, 0, 0))?;
    }
    Ok(())
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`, which outlives the call.
    let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn hosts_content(hostname: &str, ip: Option<Ipv4Addr>, peers: &[(String, Ipv4Addr)]) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost\n");
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    for (name, ip) in peers {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    s
}

/// Outcome of trying to write `/etc/hosts` itself.
pub enum EtcHosts {
    Written,
    /// A symlink (to /run/hosts, by the image builder): left alone.
    Symlink,
    /// The root is read-only.
    ReadOnly,
}

/// Write `/run/hosts`, and `/etc/hosts` too unless it is a symlink or the
/// root filesystem is read-only.
pub fn write_hosts(content: &str) -> io::Result<EtcHosts> {
    std::fs::write(RUN_HOSTS, content)?;
    let etc = Path::new(ETC_HOSTS);
    if let Ok(md) = std::fs::symlink_metadata(etc) {
        if md.file_type().is_symlink() {
            return Ok(EtcHosts::Symlink);
        }
    }
    match std::fs::write(etc, content) {
        Ok(()) => Ok(EtcHosts::Written),
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => Ok(EtcHosts::ReadOnly),
        Err(e) => Err(io::Error::new(e.kind(), format!("{ETC_HOSTS}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_roundtrip() {
        let a = Ipv4Addr::new(10, 0, 120, 101);
        let sa = sockaddr_v4(a);
        assert_eq!(libc::c_int::from(sa.sa_family), libc::AF_INET);
        // Network byte order: first data bytes after the port are the address.
        assert_eq!(
            &sa.sa_data[2..6],
            &[10, 0, 120, 101].map(|b: u8| b as libc::c_char)
        );
        assert_eq!(v4_of_sockaddr(&sa), Some(a));
    }

    #[test]
    fn ifreq_name_limits() {
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq("").is_err());
        assert!(ifreq("a-very-long-name").is_err());
    }

    #[test]
    fn hosts_file() {
        assert_eq!(
            hosts_content("h", None, &[]),
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n"
        );
        assert_eq!(
            hosts_content("echo", Some(Ipv4Addr::new(10, 0, 2, 15)), &[]),
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n10.0.2.15\techo\n"
        );
        assert_eq!(
            hosts_content(
                "e-1",
                Some(Ipv4Addr::new(10, 0, 2, 15)),
                &[("e-2".into(), Ipv4Addr::new(10, 0, 2, 16))]
            ),
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n10.0.2.15\te-1\n10.0.2.16\te-2\n"
        );
    }

    #[test]
    fn loopback_query_works_unprivileged() {
        // Reading flags and the address of `lo` needs no privileges.
        let s = Sock::new().expect("socket");
        assert!(s.exists("lo").expect("exists"));
        assert!(!s.exists("nosuchif0").expect("exists"));
        let _ = s.flags("lo").expect("flags");
    }
}
