#!/bin/bash
# prove-epmd-thread.sh - beambake's OTP 25 "osv" patch set on a Linux host:
# epmd runs as a thread of erlexec, and the emulator runs in that same
# process (no fork(), no exec()), the way OSv runs them.
#
# Usage: prove-epmd-thread.sh [OTP_TREE]
#
# OTP_TREE is an OTP 25.2.3 source tree with
# patches/otp/25/common and patches/otp/25/osv applied, configured and built
# like this (position-independent *code* everywhere, because this script
# relinks the emulator and erlexec as shared objects: glibc refuses to
# dlopen() a position-independent executable, OSv does not):
#
#   ./configure CFLAGS="-O2 -fPIC -DBEAMBAKE_NO_FORK -DBEAMBAKE_ERLEXEC_IN_PROCESS \
#       -DBEAMBAKE_EPMD_THREAD" CXXFLAGS="-O2 -fPIC" LDFLAGS="-pie" --without-javac ...
#   make -j2 erl_interface && make -j2 emulator
# (`cargo xtask otp-build --set osv` does all of that from a fresh copy of the
#  pristine source and prints the tree; `cargo xtask otp-prove` runs this script on it.)
#
# Kernel, stdlib etc. come from Debian's erlang 25.2.3 in /usr/lib/erlang (the
# same OTP version), through a scratch root whose kernel directory is a copy
# with OTP_TREE's patched inet_gethost_native.erl (common/0002) compiled in by
# Debian's erlc: without it a node that cannot spawn halts at boot, when
# kernel looks up its own host name through the inet_gethost port program.
# Node b is Debian's /usr/bin/erl.
#
# Steps (each prints PASS or FAIL; the exit status is 0 only if all pass):
#  0. Link beam.smp and erlexec as shared objects from the tree's objects into
#     a scratch BINDIR; build a start-otp.so-style loader and a preload
#     library whose fork/vfork/exec*/posix_spawn*/system fail with ENOSYS.
#  1. "erlexec": the tree's erlexec (BINDIR=scratch) starts node a; it runs
#     epmd on a thread and dlopen()s beam.smp, one process, with process
#     creation disabled by the preload library.
#  2. "start-otp": the loader dlopen()s erlexec.so and calls erlexec_main(),
#     which does the same inside the loader's process (what OSv does).
#     For 1 and 2: no process named epmd exists (none did before, or those are
#     ignored), node a's process has a thread named epmd_thread, beam.smp is
#     mapped into it, it has no child processes, and from Debian's erl
#     (b@127.0.0.1, -start_epmd false) net_adm:ping('a@127.0.0.1') is pong and
#     the thread's epmd lists node a.
#  3. Control: with ERL_EPMD_THREAD=false the same erlexec starts the epmd
#     program as upstream does: the check must see an epmd process (killed by
#     its pid afterwards; the script started it).
# A private epmd port (ERL_EPMD_PORT) is used, so an epmd already serving
# 4369 on this host cannot answer in the thread's place.
set -u

TREE=${1:?usage: prove-epmd-thread.sh OTP_TREE (cargo xtask otp-build --set osv prints it)}
ARCH=x86_64-pc-linux-gnu
HOST_ROOT=/usr/lib/erlang
HOST_ERL=/usr/bin/erl
SCR=$(mktemp -d /tmp/prove-epmd-thread.XXXXXX)
BIN=$SCR/bin
NODE_PID=
FAILS=0

say()  { printf '%s\n' "$*"; }
pass() { say "PASS: $*"; }
fail() { say "FAIL: $*"; FAILS=$((FAILS + 1)); }
die()  { say "ERROR: $*"; cleanup; exit 2; }

cleanup() {
    if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then
        kill "$NODE_PID" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$NODE_PID" 2>/dev/null || break
            sleep 0.5
        done
        kill -9 "$NODE_PID" 2>/dev/null
    fi
    NODE_PID=
}
trap 'cleanup' EXIT

# PIDs of processes (not threads) whose name is exactly "epmd"
epmd_pids() {
    local f
    for f in /proc/[0-9]*/comm; do
        [ "$(cat "$f" 2>/dev/null)" = epmd ] && { f=${f#/proc/}; say "${f%/comm}"; }
    done
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------------------
# 0. Build the pieces
[ -x "$TREE/bin/$ARCH/erlexec" ] || die "$TREE/bin/$ARCH/erlexec missing: build the tree first"
[ -x "$HOST_ERL" ] || die "$HOST_ERL missing (apt-get install erlang-base)"
OBJ=$TREE/erts/obj/$ARCH
for o in erlexec erlexec_epmd erlexec_epmd_srv erlexec_epmd_cli; do
    [ -f "$OBJ/$o.o" ] || die "$OBJ/$o.o missing: was the tree built with -DBEAMBAKE_EPMD_THREAD?"
done
mkdir -p "$BIN" "$SCR/home" "$SCR/root/lib"
cp "$TREE/bin/$ARCH/erlexec" "$TREE/bin/$ARCH/epmd" "$BIN/"
ROOT=$SCR/root
cp -a "$HOST_ROOT/bin" "$ROOT/"
for d in "$HOST_ROOT"/lib/*; do
    case ${d##*/} in
        kernel-*) cp -a "$d" "$ROOT/lib/" ;;
        *) ln -s "$d" "$ROOT/lib/" ;;
    esac
done
erlc -o "$ROOT"/lib/kernel-*/ebin "$TREE/lib/kernel/src/inet_gethost_native.erl" ||
    die "compiling $TREE/lib/kernel/src/inet_gethost_native.erl failed"

# The emulator's link command, as make would run it, relinked with -shared.
# The flavour the tree was built with: jit, or emu for an OSv build (--disable-jit).
FLAVOR=jit
[ -d "$TREE/erts/emulator/obj/$ARCH/opt/jit" ] || FLAVOR=emu
BEAM_OUT=$TREE/bin/$ARCH/beam
LINK=$(cd "$TREE/erts/emulator" && ERL_TOP=$TREE make -s -f $ARCH/Makefile TYPE=opt FLAVOR=$FLAVOR \
         -n V=1 -W obj/$ARCH/opt/$FLAVOR/erl_main.o 2>/dev/null |
       awk -v out="$BEAM_OUT" '
           index($0, "-o " out) { on = 1 }
           on { line = $0; cont = sub(/\\$/, "", line); printf "%s ", line; if (!cont) exit }')
[ -n "$LINK" ] || die "could not get the emulator link command from make"
LINK=$(printf '%s' "$LINK" | sed "s#-o $BEAM_OUT[^ ]*#-o $BIN/beam.smp#")
LINK=${LINK/ -pie / -shared }
(cd "$TREE/erts/emulator" && eval "$LINK") >"$SCR/link-beam.log" 2>&1 ||
    die "linking beam.smp as a shared object failed (objects not -fPIC?): see $SCR/link-beam.log"
gcc -shared -o "$BIN/erlexec.so" "$OBJ/erlexec.o" "$OBJ/erlexec_epmd.o" \
    "$OBJ/erlexec_epmd_srv.o" "$OBJ/erlexec_epmd_cli.o" \
    -L"$TREE/erts/lib/internal/$ARCH" -lerts_internal -lm -ldl -lpthread \
    >"$SCR/link-erlexec.log" 2>&1 ||
    die "linking erlexec.so failed: see $SCR/link-erlexec.log"

cat >"$SCR/start-otp.c" <<'EOF'
/* Stand-in for rebar3_osv's start-otp.so on a Linux host: load erlexec into
 * this process and call its entry point, as OSv's loader does. */
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv)
{
    void *h;
    int (*entry)(int, char **);
    if (argc < 2) {
        fprintf(stderr, "usage: start-otp ERLEXEC_SO [ERL_ARGS...]\n");
        return 2;
    }
    if (!(h = dlopen(argv[1], RTLD_NOW))) {
        fprintf(stderr, "start-otp: %s\n", dlerror());
        return 1;
    }
    *(void **) &entry = dlsym(h, "erlexec_main");
    if (!entry) {
        fprintf(stderr, "start-otp: %s\n", dlerror());
        return 1;
    }
    argv[1] = "erlexec";
    return entry(argc - 1, argv + 1);
}
EOF
gcc -O2 -o "$BIN/start-otp" "$SCR/start-otp.c" -ldl || die "building start-otp failed"

cat >"$SCR/noproc.c" <<'EOF'
/* Process creation fails as on OSv: preloaded into node a. */
#include <errno.h>
#include <spawn.h>
#include <sys/types.h>
#define NOSYS { errno = ENOSYS; return -1; }
pid_t fork(void) NOSYS
pid_t vfork(void) NOSYS
int execve(const char *p, char *const a[], char *const e[]) NOSYS
int execv(const char *p, char *const a[]) NOSYS
int execvp(const char *p, char *const a[]) NOSYS
int system(const char *c) NOSYS
int posix_spawn(pid_t *pid, const char *p, const posix_spawn_file_actions_t *f,
                const posix_spawnattr_t *at, char *const a[], char *const e[])
{ return ENOSYS; }
int posix_spawnp(pid_t *pid, const char *p, const posix_spawn_file_actions_t *f,
                 const posix_spawnattr_t *at, char *const a[], char *const e[])
{ return ENOSYS; }
EOF
gcc -O2 -shared -fPIC -o "$SCR/noproc.so" "$SCR/noproc.c" || die "building noproc.so failed"
pass "0: beam.smp and erlexec linked as shared objects, loader and no-process-creation preload built in $SCR"

# Private epmd port
PORT=
for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    listening "$p" || { PORT=$p; break; }
done
[ -n "$PORT" ] || die "no free port found"
say "epmd port for this run: $PORT"

BEFORE=$(epmd_pids | tr '\n' ' ')
[ -z "$BEFORE" ] || say "note: epmd processes already running (ignored): $BEFORE"
new_epmd_pids() {
    local p
    for p in $(epmd_pids); do
        case " $BEFORE " in *" $p "*) ;; *) say "$p" ;; esac
    done
}

# Start node a with the given launcher and environment; sets NODE_PID.
start_node_a() { # name preload launcher... (extra environment in $EXTRA_ENV)
    local name=$1 preload=$2; shift 2
    env ROOTDIR=$ROOT BINDIR=$BIN EMU=beam PROGNAME=erl HOME=$SCR/home \
        ERL_EPMD_PORT=$PORT ERL_CRASH_DUMP=$SCR/$name.dump ${preload:+LD_PRELOAD=$preload} \
        ${EXTRA_ENV:-} "$@" -name a@127.0.0.1 -setcookie c -noshell \
        </dev/null >"$SCR/$name.log" 2>&1 &
    NODE_PID=$!
    for _ in $(seq 1 60); do
        listening "$PORT" && return 0
        kill -0 "$NODE_PID" 2>/dev/null || return 1
        sleep 0.25
    done
    return 1
}

# Node b (Debian's erl): ping a, ask the epmd on $PORT for its names.
B_EVAL='
A = list_to_atom("a@127.0.0.1"),
Ping = fun Loop(0) -> pang;
           Loop(N) -> case net_adm:ping(A) of
                          pong -> pong;
                          pang -> timer:sleep(250), Loop(N - 1)
                      end
       end,
io:format("PING ~p~n", [Ping(80)]),
{ok, Names} = erl_epmd:names({127,0,0,1}),
io:format("NAMES ~p~n", [lists:sort([N || {N, _} <- Names])]),
io:format("A_PROCESS ~s~n", [rpc:call(A, os, getpid, [])]),
halt().'
run_node_b() { # name
    env ERL_EPMD_PORT=$PORT HOME=$SCR/home ERL_CRASH_DUMP=$SCR/$1.b.dump timeout 60 "$HOST_ERL" -name b@127.0.0.1 -setcookie c \
        -start_epmd false -noshell -eval "$B_EVAL" >"$SCR/$1.b.log" 2>&1
}

check_scenario() { # name comm
    local name=$1 comm=$2 pid=$NODE_PID threads epmds
    epmds=$(new_epmd_pids | tr '\n' ' ')
    [ -z "$epmds" ] && pass "$name: no process named epmd" ||
        fail "$name: epmd process(es) running: $epmds"
    [ "$(cat /proc/$pid/comm)" = "$comm" ] && pass "$name: node a is process $pid ($comm)" ||
        fail "$name: process $pid is $(cat /proc/$pid/comm), expected $comm"
    threads=$(cat /proc/$pid/task/*/comm | sort | uniq -c | tr -s ' ' | tr '\n' ',')
    grep -qx epmd_thread /proc/$pid/task/*/comm &&
        pass "$name: thread epmd_thread in process $pid (threads:${threads%,})" ||
        fail "$name: no epmd_thread among: $threads"
    grep -q "$BIN/beam.smp" /proc/$pid/maps && pass "$name: beam.smp is mapped into process $pid" ||
        fail "$name: beam.smp not mapped into $pid"
    [ -z "$(pgrep -P "$pid")" ] &&
        pass "$name: process $pid has no child processes" ||
        fail "$name: process $pid has children: $(pgrep -l -P "$pid" | tr '\n' ' ')"
    run_node_b "$name"
    grep -qx "PING pong" "$SCR/$name.b.log" && pass "$name: net_adm:ping('a@127.0.0.1') = pong" ||
        fail "$name: ping: $(cat "$SCR/$name.b.log")"
    grep -q '^NAMES \["a","b"\]' "$SCR/$name.b.log" && pass "$name: epmd on port $PORT lists a and b" ||
        fail "$name: names: $(grep NAMES "$SCR/$name.b.log")"
    grep -qx "A_PROCESS $pid" "$SCR/$name.b.log" && pass "$name: os:getpid() on a is $pid" ||
        fail "$name: a's os:getpid(): $(grep A_PROCESS "$SCR/$name.b.log")"
    epmds=$(new_epmd_pids | tr '\n' ' ')
    [ -z "$epmds" ] && pass "$name: still no process named epmd after the ping" ||
        fail "$name: epmd process(es) running: $epmds"
}

# ---------------------------------------------------------------------------
# 1. erlexec (executable) -> epmd thread + beam.smp in-process
if start_node_a erlexec "$SCR/noproc.so" "$BIN/erlexec"; then
    check_scenario erlexec erlexec
else
    fail "erlexec: node a did not come up: $(cat "$SCR/erlexec.log")"
fi
cleanup

# 2. start-otp loader -> erlexec.so -> epmd thread + beam.smp in-process
if start_node_a start-otp "$SCR/noproc.so" "$BIN/start-otp" "$BIN/erlexec.so"; then
    check_scenario start-otp start-otp
else
    fail "start-otp: node a did not come up: $(cat "$SCR/start-otp.log")"
fi
cleanup

# 3. Control: ERL_EPMD_THREAD=false -> erlexec spawns "$BIN/epmd -daemon"
CONTROL_EPMD=
if EXTRA_ENV=ERL_EPMD_THREAD=false start_node_a control "" "$BIN/erlexec"; then
    CONTROL_EPMD=$(new_epmd_pids | tr '\n' ' ')
    [ -n "$CONTROL_EPMD" ] && pass "control: ERL_EPMD_THREAD=false starts an epmd process ($CONTROL_EPMD), the check sees it" ||
        fail "control: no epmd process seen with ERL_EPMD_THREAD=false"
    grep -qx epmd_thread /proc/$NODE_PID/task/*/comm &&
        fail "control: epmd_thread present although disabled" ||
        pass "control: no epmd_thread in process $NODE_PID"
else
    fail "control: node a did not come up: $(cat "$SCR/control.log")"
fi
cleanup
for p in $CONTROL_EPMD; do   # started by this script: its binary is ours
    [ "$(readlink /proc/$p/exe)" = "$BIN/epmd" ] && kill "$p"
done

if [ "$FAILS" -eq 0 ]; then rm -rf "$SCR"; say "ALL PASSED"; exit 0; fi
say "logs in $SCR"
say "$FAILS FAILED"; exit 1
