//! `struct ifreq` naming an interface and IPv4 `sockaddr`s, for the link ioctls. One
//! file for the init (`init/src/net.rs`) and the builder (`builder/src/net.rs` includes
//! it with `#[path]`): std and libc only.

use std::io;
use std::net::Ipv4Addr;

/// A zeroed `ifreq` with `ifr_name` set to `name`; an error when the name is empty,
/// does not fit `IFNAMSIZ` (with its NUL) or holds a NUL.
pub fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}: empty, too long or with a NUL"),
        ));
    }
    // SAFETY: ifreq is a plain C struct/union for which all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// `addr` as the `sockaddr` (an AF_INET `sockaddr_in`) that address, netmask and route
/// ioctls take.
pub fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-old-data C
    // structs; the kernel reads this sockaddr as a sockaddr_in because
    // sa_family is AF_INET. `transmute` checks the sizes at compile time.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}
