#!/usr/bin/env bash
# A private libvirtd for beambake_libvirt_tests, nothing on the host changed.
#
# Run as PID 1 of fresh PID, mount and network namespaces:
#   unshare --mount --net --pid --fork --kill-child --mount-proc --propagation private \
#       bash private_libvirtd.sh DIR
# DIR (a fresh temp dir) gets libvirt's config copy (etc/), state (lib/, run/ via /run,
# cache/, log/) and the socket dir (sock/: the URI is
# qemu+unix:///system?socket=DIR/sock/libvirt-sock). In the namespace: /run a tmpfs,
# /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /etc/libvirt bind-mounted
# from DIR; loopback up; tap0 (10.0.120.100/24, the echo recipe's host side) made here.
# Prints "ready" when libvirtd's socket is there, then lives until its standard input
# closes (the test closed the port, or the Erlang VM died), stops libvirtd and exits:
# the PID namespace, with every qemu in it, ends with it. bash as PID 1 reaps orphans
# (qemu is daemonized), so libvirt sees its qemu processes go.
set -euo pipefail
T=${1:?usage: private_libvirtd.sh DIR}
say() { echo "private_libvirtd: $*"; }
for d in /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /etc/libvirt; do
    [ -d "$d" ] || { say "$d is missing: apt-get install libvirt-daemon-system"; exit 2; }
done
command -v libvirtd >/dev/null || { say "libvirtd not found: apt-get install libvirt-daemon-system"; exit 2; }
mkdir -p "$T/etc" "$T/lib" "$T/cache" "$T/log" "$T/sock"
cp -a /etc/libvirt/. "$T/etc/"
# No network of libvirt's own (the default network would start dnsmasq and a bridge).
rm -f "$T/etc/qemu/networks/autostart/"*.xml
cat >>"$T/etc/qemu.conf" <<EOF

# --- beambake_libvirt_tests: qemu as root, no security driver, no cgroups, no virtlogd.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
EOF
cat >"$T/etc/libvirtd.conf" <<EOF
unix_sock_dir = "$T/sock"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$T/libvirtd.log"
EOF
mount -t tmpfs -o mode=0755 beambake-run /run
mount --bind "$T/lib" /var/lib/libvirt
mount --bind "$T/cache" /var/cache/libvirt
mount --bind "$T/log" /var/log/libvirt
mount --bind "$T/etc" /etc/libvirt
ip link set lo up
ip tuntap add dev tap0 mode tap
ip addr add 10.0.120.100/24 dev tap0
ip link set tap0 up
libvirtd --config /etc/libvirt/libvirtd.conf >"$T/libvirtd.out" 2>&1 &
daemon=$!
for _ in $(seq 1 600); do
    [ -S "$T/sock/libvirt-sock" ] && break
    kill -0 "$daemon" 2>/dev/null || { say "libvirtd exited: $(tail -5 "$T/libvirtd.out" "$T/libvirtd.log" 2>/dev/null | tr '\n' ' ')"; exit 3; }
    sleep 0.1
done
[ -S "$T/sock/libvirt-sock" ] || { say "no socket after 60 s"; exit 3; }
say "ready"
while read -r _; do :; done
kill -TERM "$daemon" 2>/dev/null || true
wait "$daemon" 2>/dev/null || true
say "stopped"
