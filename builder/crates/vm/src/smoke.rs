//! Smoke checks against booted guests (one or several VMs): TCP echo round trip, HTTP
//! GET, the same two over TLS (certificate verified against a CA file, or explicitly
//! not; see [`tls`]), Erlang distribution (a host node pings every guest node and runs
//! an `rpc:call`; several nodes must also reach each other and answer an
//! `rpc:multicall`), and an `rpc` check that runs a call on the guest node and compares
//! the result. Every check is bounded in time; the first one also waits (bounded) for the
//! guest to become ready and notices when the guest ends instead (reporting its exit
//! status and console tail).
//!
//! Owns: the checks, the report and its JUnit XML form.
//! Must not: start or configure guests (it is handed a running [`Guest`]), or touch
//! any network but the one it is pointed at.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::boot::guest::Guest;
use beambake_recipe::Check;

pub mod tls;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    pub millis: u64,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub name: String,
    pub accel: String,
    /// Why that accelerator (who asked for it, or the KVM probe's verdict).
    #[serde(default)]
    pub accel_reason: Option<String>,
    pub passed: bool,
    /// Every guest became ready (the first check passed against each): when false and the
    /// run failed, the guests did not come up, else a check failed on running guests.
    #[serde(default)]
    pub ready: bool,
    /// From VM start to the first check passing.
    pub boot_to_ready_ms: Option<u64>,
    pub checks: Vec<CheckResult>,
    /// The guest's own exit status, when it ended during the run.
    pub guest_exit: Option<i32>,
    pub console_tail: Option<String>,
}

/// Why a check failed (its report's message).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("not run: a guest ended")]
    NotRun,
    #[error(
        "the guest ended before it was ready: {}the release exited with status {status} \
         (last attempt: {})",
        because(.why), attempt(.last)
    )]
    GuestEnded {
        /// What the console says went wrong.
        why: Option<String>,
        status: i32,
        last: Option<Box<CheckError>>,
    },
    #[error(
        "the VM ended before the guest was ready ({}{vm}; last attempt: {})",
        because(.why), attempt(.last)
    )]
    VmEnded {
        why: Option<String>,
        vm: ExitStatus,
        last: Option<Box<CheckError>>,
    },
    #[error("not ready after {}s (last attempt: {})", .after.as_secs(), attempt(.last))]
    NotReady {
        after: Duration,
        last: Option<Box<CheckError>>,
    },
    #[error("no such VM")]
    NoSuchVm,
    #[error("connect {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{addr}: {source}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Sending or reading failed; `why` words the I/O error (see [`tls::explain`]).
    #[error("{action} {addr}: {why}")]
    Exchange {
        /// `send to`, `read from`, `read echo from`.
        action: &'static str,
        addr: SocketAddr,
        why: String,
    },
    #[error("{addr} answered {got:?}{over}, expected {want:?}")]
    Echo {
        addr: SocketAddr,
        got: String,
        want: String,
        /// `""` or `" over TLS"`.
        over: &'static str,
    },
    #[error("{addr}{path}: not an HTTP response: {start:?}")]
    NotHttp {
        addr: SocketAddr,
        path: String,
        start: String,
    },
    #[error("{addr}{path}: status {got}, expected {want}")]
    Status {
        addr: SocketAddr,
        path: String,
        got: u16,
        want: u16,
    },
    #[error("{addr}{path}: body does not contain {want:?}: {body:?}")]
    Body {
        addr: SocketAddr,
        path: String,
        want: String,
        body: String,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("the image has no node name")]
    NoNodeName,
    #[error("the image has no cookie")]
    NoCookie,
    /// The distribution check's verdict, as the host node printed it.
    #[error("nodes {nodes}: {result}")]
    Cluster { nodes: String, result: String },
    #[error("net_adm:ping('{node}') -> pang")]
    Pang { node: String },
    #[error("{node}: {call} -> {got}, expected {expect}")]
    Mismatch {
        node: String,
        call: String,
        got: String,
        expect: String,
    },
    #[error("writing the checking node's inetrc: {0}")]
    Inetrc(#[source] io::Error),
    #[error("starting erl (apt-get install erlang-nox): {0}")]
    StartErl(#[source] io::Error),
    #[error("the host node got no answer within {}s", .0.as_secs())]
    HostNodeTimeout(Duration),
    #[error("unexpected host node output: {stdout}{stderr}")]
    HostNodeOutput { stdout: String, stderr: String },
}

/// `why; ` (or nothing).
fn because(why: &Option<String>) -> String {
    why.as_ref().map(|w| format!("{w}; ")).unwrap_or_default()
}

/// The last attempt's failure, or `no attempt`.
fn attempt(last: &Option<Box<CheckError>>) -> String {
    last.as_ref()
        .map_or_else(|| "no attempt".to_string(), |e| e.to_string())
}

/// One VM the checks talk to.
pub struct NodeTarget {
    /// Address that reaches the guest's services (its IP on a tap, 127.0.0.1 with user
    /// networking).
    pub addr: IpAddr,
    /// `NAME@IP` when distributed.
    pub node: Option<String>,
}

/// Where the checks connect, and what they need.
pub struct Target<'a> {
    /// One per VM, in the order of the guests.
    pub nodes: Vec<NodeTarget>,
    /// Host address the checking node runs as (tap mode), for distribution checks.
    pub host: IpAddr,
    pub cookie: Option<&'a str>,
    pub ready_timeout: Duration,
    pub check_timeout: Duration,
}

pub fn check_name(c: &Check) -> String {
    match c {
        Check::TcpEcho { port, .. } => format!("tcp_echo:{port}"),
        Check::Http { port, path, .. } => format!("http:{port}{path}"),
        Check::Distribution {} => "distribution".into(),
        Check::Rpc { call, .. } => format!("rpc:{call}"),
        Check::TlsEcho { port, .. } => format!("tls_echo:{port}{}", tls_suffix(c)),
        Check::Https { port, path, .. } => format!("https:{port}{path}{}", tls_suffix(c)),
    }
}

/// How a TLS check's name tells it from another on the same port.
fn tls_suffix(c: &Check) -> String {
    let Some(t) = c.tls() else {
        return String::new();
    };
    let mut s = String::new();
    if let Some(n) = t.server_name {
        s.push_str(&format!(" (server_name {n})"));
    }
    if t.ca.is_none() {
        s.push_str(" (unverified)");
    }
    s
}

/// Runs `checks` in order against every guest (the distribution check runs once, for all
/// of them). The first check is retried until each guest is ready (or ends, or
/// `ready_timeout` passes); the others run once, each within `check_timeout`.
pub fn run(name: &str, accel: &str, guests: &mut [Guest], checks: &[Check], t: &Target) -> Report {
    let mut report = Report {
        name: name.into(),
        accel: accel.into(),
        accel_reason: None,
        passed: false,
        ready: !checks.is_empty(),
        boot_to_ready_ms: None,
        checks: vec![],
        guest_exit: None,
        console_tail: None,
    };
    let many = guests.len() > 1;
    let mut ended = false;
    'checks: for (i, check) in checks.iter().enumerate() {
        let targets: Vec<Option<usize>> = match check {
            Check::Distribution {} => vec![None],
            _ => (0..guests.len()).map(Some).collect(),
        };
        for vm in targets {
            let start = Instant::now();
            let outcome = if ended {
                Err(CheckError::NotRun)
            } else if i == 0 {
                wait_ready(guests, vm, check, t)
            } else {
                run_one(check, t, vm, t.check_timeout)
            };
            let millis = start.elapsed().as_millis() as u64;
            let (passed, message) = match outcome {
                Ok(m) => (true, m),
                Err(e) => (false, e.to_string()),
            };
            if i == 0 && !passed {
                report.ready = false;
            }
            if i == 0 && passed {
                report.boot_to_ready_ms = Some(
                    guests
                        .iter()
                        .map(|g| g.started.elapsed().as_millis() as u64)
                        .min()
                        .unwrap_or(0),
                );
            }
            let mut cname = check_name(check);
            if let (true, Some(v)) = (many, vm) {
                cname.push_str(&format!(" @vm{}", v + 1));
            }
            report.checks.push(CheckResult {
                name: cname,
                passed,
                millis,
                message,
            });
            if let Some(g) = guests
                .iter_mut()
                .find_map(|g| g.exited().is_some().then_some(g))
            {
                report.guest_exit = g.guest_status();
                ended = true;
                if !many {
                    break 'checks;
                }
            }
        }
    }
    // Checks that never ran because the guest ended are failures too.
    if !many {
        for check in checks.iter().skip(report.checks.len()) {
            report.checks.push(CheckResult {
                name: check_name(check),
                passed: false,
                millis: 0,
                message: "not run: the guest ended".into(),
            });
        }
    }
    report.passed = !report.checks.is_empty() && report.checks.iter().all(|c| c.passed);
    if !report.passed {
        let failing = guests
            .iter_mut()
            .position(|g| g.exited().is_some())
            .unwrap_or(0);
        report.console_tail = guests.get(failing).map(|g| {
            let tail = g.console_tail(40);
            match crate::boot::uml::explain(&tail) {
                Some(why) => format!("{why}\n{tail}"),
                None => tail,
            }
        });
    }
    report
}

/// Retries `check` against VM `vm` (all VMs for `None`) until it passes, a guest ends, or
/// the ready timeout passes.
fn wait_ready(
    guests: &mut [Guest],
    vm: Option<usize>,
    check: &Check,
    t: &Target,
) -> Result<String, CheckError> {
    let start = Instant::now();
    let mut last = None;
    loop {
        for g in guests.iter_mut() {
            if let Some(vm) = g.exited() {
                let why = crate::boot::uml::explain(&g.console_tail(60)).map(str::to_string);
                return Err(match g.guest_status() {
                    Some(status) => CheckError::GuestEnded { why, status, last },
                    None => CheckError::VmEnded { why, vm, last },
                });
            }
        }
        let left = t.ready_timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(CheckError::NotReady {
                after: t.ready_timeout,
                last,
            });
        }
        match run_one(check, t, vm, left.min(Duration::from_secs(5))) {
            Ok(m) => return Ok(m),
            Err(e) => last = Some(Box::new(e)),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_one(
    check: &Check,
    t: &Target,
    vm: Option<usize>,
    bound: Duration,
) -> Result<String, CheckError> {
    let node = |vm: Option<usize>| t.nodes.get(vm.unwrap_or(0)).ok_or(CheckError::NoSuchVm);
    match check {
        Check::TcpEcho { port, payload } => {
            tcp_echo(SocketAddr::new(node(vm)?.addr, *port), payload, bound)
        }
        Check::Http {
            port,
            path,
            status,
            body_contains,
        } => http_get(
            SocketAddr::new(node(vm)?.addr, *port),
            path,
            *status,
            body_contains,
            bound,
        ),
        Check::Distribution {} => distribution(t, bound),
        Check::Rpc { call, expect } => rpc(t, node(vm)?, call, expect.as_deref(), bound),
        Check::TlsEcho {
            port,
            payload,
            ca,
            server_name,
            ..
        } => tls_echo(
            SocketAddr::new(node(vm)?.addr, *port),
            payload,
            ca.as_deref(),
            server_name.as_deref(),
            bound,
        ),
        Check::Https {
            port,
            path,
            status,
            body_contains,
            ca,
            server_name,
            ..
        } => https_get(
            SocketAddr::new(node(vm)?.addr, *port),
            HttpWant {
                path,
                status: *status,
                body_contains,
            },
            ca.as_deref(),
            server_name.as_deref(),
            bound,
        ),
    }
}

fn connect(addr: SocketAddr, bound: Duration) -> Result<TcpStream, CheckError> {
    let s = TcpStream::connect_timeout(&addr, bound.max(Duration::from_millis(100)))
        .map_err(|source| CheckError::Connect { addr, source })?;
    let socket = |source| CheckError::Socket { addr, source };
    s.set_read_timeout(Some(bound.max(Duration::from_millis(100))))
        .map_err(socket)?;
    s.set_write_timeout(Some(bound.max(Duration::from_millis(100))))
        .map_err(socket)?;
    Ok(s)
}

/// A failed send or read: `action addr: why`.
fn exchange(action: &'static str, addr: SocketAddr, why: String) -> CheckError {
    CheckError::Exchange { action, addr, why }
}

pub fn tcp_echo(addr: SocketAddr, payload: &str, bound: Duration) -> Result<String, CheckError> {
    let mut s = connect(addr, bound)?;
    s.write_all(payload.as_bytes())
        .map_err(|e| exchange("send to", addr, e.to_string()))?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back)
        .map_err(|e| exchange("read echo from", addr, e.to_string()))?;
    if back != payload.as_bytes() {
        return Err(CheckError::Echo {
            addr,
            got: String::from_utf8_lossy(&back).into_owned(),
            want: payload.to_string(),
            over: "",
        });
    }
    Ok(format!("{addr} echoed {} bytes", payload.len()))
}

pub fn http_get(
    addr: SocketAddr,
    path: &str,
    want_status: u16,
    body_contains: &str,
    bound: Duration,
) -> Result<String, CheckError> {
    let mut s = connect(addr, bound)?;
    let want = HttpWant {
        path,
        status: want_status,
        body_contains,
    };
    http_exchange(&mut s, addr, &addr.ip().to_string(), &want, &|e| {
        e.to_string()
    })
}

/// What an HTTP(S) check asks for and expects.
pub struct HttpWant<'a> {
    pub path: &'a str,
    pub status: u16,
    pub body_contains: &'a str,
}

/// TLS echo: the handshake, `payload` sent, the same bytes back, all within `bound`.
pub fn tls_echo(
    addr: SocketAddr,
    payload: &str,
    ca: Option<&Path>,
    server_name: Option<&str>,
    bound: Duration,
) -> Result<String, CheckError> {
    let deadline = Instant::now() + bound;
    let mut s = tls::connect(addr, ca, server_name, deadline)?;
    let why = |e: &std::io::Error| tls::explain(e, deadline, bound);
    s.stream
        .write_all(payload.as_bytes())
        .and_then(|()| s.stream.flush())
        .map_err(|e| exchange("send to", addr, why(&e)))?;
    let mut back = vec![0u8; payload.len()];
    s.stream
        .read_exact(&mut back)
        .map_err(|e| exchange("read echo from", addr, why(&e)))?;
    if back != payload.as_bytes() {
        return Err(CheckError::Echo {
            addr,
            got: String::from_utf8_lossy(&back).into_owned(),
            want: payload.to_string(),
            over: " over TLS",
        });
    }
    Ok(format!(
        "{addr} echoed {} bytes over {} ({})",
        payload.len(),
        s.version,
        s.verified
    ))
}

/// HTTPS GET: an [`http_get`] over TLS, all within `bound`.
pub fn https_get(
    addr: SocketAddr,
    want: HttpWant,
    ca: Option<&Path>,
    server_name: Option<&str>,
    bound: Duration,
) -> Result<String, CheckError> {
    let deadline = Instant::now() + bound;
    let mut s = tls::connect(addr, ca, server_name, deadline)?;
    let host = server_name
        .map(str::to_string)
        .unwrap_or_else(|| addr.ip().to_string());
    let ok = http_exchange(&mut s.stream, addr, &host, &want, &|e| {
        tls::explain(e, deadline, bound)
    })?;
    Ok(format!("{ok} over {} ({})", s.version, s.verified))
}

/// Sends a GET for `want.path` on `s` and judges the answer (read to the end, at most
/// 1 MiB); `why` words an I/O error.
fn http_exchange(
    s: &mut (impl Read + Write),
    addr: SocketAddr,
    host: &str,
    want: &HttpWant,
    why: &dyn Fn(&std::io::Error) -> String,
) -> Result<String, CheckError> {
    let (path, want_status, body_contains) = (want.path, want.status, want.body_contains);
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .and_then(|()| s.flush())
    .map_err(|e| exchange("send to", addr, why(&e)))?;
    let mut resp = Vec::new();
    if let Err(e) = s.take(1 << 20).read_to_end(&mut resp) {
        // A reset (or a TLS peer closing without close_notify) after a complete answer
        // still counts as the answer.
        if resp.is_empty() {
            return Err(exchange("read from", addr, why(&e)));
        }
    }
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CheckError::NotHttp {
            addr,
            path: path.to_string(),
            start: text.chars().take(80).collect(),
        })?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    if status != want_status {
        return Err(CheckError::Status {
            addr,
            path: path.to_string(),
            got: status,
            want: want_status,
        });
    }
    if !body.contains(body_contains) {
        return Err(CheckError::Body {
            addr,
            path: path.to_string(),
            want: body_contains.to_string(),
            body: body.chars().take(200).collect(),
        });
    }
    Ok(format!("{addr}{path}: {status}"))
}

/// Every node is pinged from a host node (`beambake_check@HOST`) and answers an
/// `rpc:call`; with several nodes, each pings every other and `rpc:multicall` reaches all.
/// The verdict is computed in Erlang and printed as one `BEAMBAKE_RESULT` line.
const DISTRIBUTION_EVAL: &str = r#"
Ns = [list_to_atom(N) || N <- string:lexemes(os:getenv("BEAMBAKE_NODES"), " ")],
Pang = [N || N <- Ns, net_adm:ping(N) =/= pong],
R = case Pang of
  [] ->
    Cross = [{A, B} || A <- Ns, B <- Ns, A =/= B,
                       rpc:call(A, net_adm, ping, [B]) =/= pong],
    {Res, Bad} = rpc:multicall(Ns, erlang, node, []),
    Otp = rpc:call(hd(Ns), erlang, system_info, [otp_release]),
    case {Cross, lists:sort(Res) =:= lists:sort(Ns), Bad} of
      {[], true, []} -> {ok, length(Ns), Otp};
      _ -> {cluster_failed, Cross, Res, Bad}
    end;
  _ -> {pang, Pang}
end,
io:format("BEAMBAKE_RESULT ~0p~n", [R]), halt()."#;

/// `call` (`M:F(Args)`) runs on the node with `rpc:call`; the result is compared with
/// `expect`. Both come in through the environment, so no quoting reaches the shell.
const RPC_EVAL: &str = r#"
Node = list_to_atom(os:getenv("BEAMBAKE_NODE")),
Parse = fun(S) -> {ok, Ts, _} = erl_scan:string(S ++ "."), {ok, [E]} = erl_parse:parse_exprs(Ts), E end,
R = case net_adm:ping(Node) of
  pang -> pang;
  pong ->
    {call, _, {remote, _, {atom, _, M}, {atom, _, F}}, As} = Parse(os:getenv("BEAMBAKE_CALL")),
    Args = [element(2, erl_eval:expr(A, [])) || A <- As],
    Got = rpc:call(Node, M, F, Args),
    case os:getenv("BEAMBAKE_EXPECT") of
      "" -> case Got of {badrpc, _} -> {mismatch, Got}; _ -> {ok, Got} end;
      Expect ->
        {value, Want, _} = erl_eval:expr(Parse(Expect), []),
        case Got =:= Want of true -> {ok, Got}; false -> {mismatch, Got} end
    end
end,
io:format("BEAMBAKE_RESULT ~0p~n", [R]), halt()."#;

fn distribution(t: &Target, bound: Duration) -> Result<String, CheckError> {
    let nodes: Vec<&str> = t.nodes.iter().filter_map(|n| n.node.as_deref()).collect();
    if nodes.is_empty() {
        return Err(CheckError::NoNodeName);
    }
    let line = host_node(
        t,
        DISTRIBUTION_EVAL,
        &[("BEAMBAKE_NODES", &nodes.join(" "))],
        bound,
    )?;
    if line.starts_with("{ok,") {
        Ok(if nodes.len() == 1 {
            format!("net_adm:ping('{}') -> pong; rpc:call -> {line}", nodes[0])
        } else {
            format!(
                "{} nodes: each answers ping from the host and from every other node; rpc:multicall reaches all ({line})",
                nodes.len()
            )
        })
    } else {
        Err(CheckError::Cluster {
            nodes: nodes.join(", "),
            result: line,
        })
    }
}

fn rpc(
    t: &Target,
    n: &NodeTarget,
    call: &str,
    expect: Option<&str>,
    bound: Duration,
) -> Result<String, CheckError> {
    let node = n.node.as_deref().ok_or(CheckError::NoNodeName)?;
    let line = host_node(
        t,
        RPC_EVAL,
        &[
            ("BEAMBAKE_NODE", node),
            ("BEAMBAKE_CALL", call),
            ("BEAMBAKE_EXPECT", expect.unwrap_or("")),
        ],
        bound,
    )?;
    match line.strip_prefix("{ok,") {
        Some(got) => Ok(format!(
            "{node}: {call} -> {}",
            expect.unwrap_or_else(|| got.strip_suffix('}').unwrap_or(got))
        )),
        None if line == "pang" => Err(CheckError::Pang { node: node.into() }),
        None => Err(CheckError::Mismatch {
            node: node.into(),
            call: call.into(),
            got: line,
            expect: expect.unwrap_or("any answer but {badrpc, _}").into(),
        }),
    }
}

/// Runs `eval` in a host node `beambake_check@HOST` (with the image's cookie) and returns
/// what it printed after `BEAMBAKE_RESULT `.
fn host_node(
    t: &Target,
    eval: &str,
    env: &[(&str, &str)],
    bound: Duration,
) -> Result<String, CheckError> {
    let Some(cookie) = t.cookie else {
        return Err(CheckError::NoCookie);
    };
    // Short names (`-sname` in the release's vm.args): the checking node is short too, and
    // finds the guests' host names through an inetrc file of their addresses (the host's
    // own /etc/hosts does not know them).
    let short: Vec<(IpAddr, &str)> = t
        .nodes
        .iter()
        .filter_map(|n| {
            let host = n.node.as_deref()?.split_once('@')?.1;
            host.parse::<IpAddr>().is_err().then_some((n.addr, host))
        })
        .collect();
    let inetrc = if short.is_empty() {
        None
    } else {
        let mut f = tempfile::Builder::new()
            .prefix("beambake-inetrc-")
            .tempfile()
            .map_err(CheckError::Inetrc)?;
        let mut text = String::from("{lookup, [file]}.\n");
        for (addr, host) in &short {
            text.push_str(&format!(
                "{{host, {{{}}}, [\"{host}\"]}}.\n",
                addr.to_string().replace('.', ",")
            ));
        }
        f.write_all(text.as_bytes()).map_err(CheckError::Inetrc)?;
        Some(f)
    };
    ensure_epmd(bound);
    let mut cmd = Command::new("erl");
    cmd.args(["-noshell", "-noinput"]);
    match &inetrc {
        Some(f) => {
            cmd.args(["-sname", "beambake_check@beambake-host"])
                .env("ERL_INETRC", f.path());
        }
        None => {
            cmd.args(["-name", &format!("beambake_check@{}", t.host)]);
        }
    }
    cmd.args(["-setcookie", cookie, "-kernel", "net_ticktime", "10"])
        .args(["-eval", eval])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::net::dies_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(CheckError::StartErl)?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < bound => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CheckError::HostNodeTimeout(bound));
            }
        }
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    match out.lines().find_map(|l| l.strip_prefix("BEAMBAKE_RESULT ")) {
        Some(line) => Ok(line.to_string()),
        None => {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            Err(CheckError::HostNodeOutput {
                stdout: out,
                stderr,
            })
        }
    }
}

/// Makes sure an epmd listens on loopback (in the check's network namespace) before a
/// host node starts. `erl` starts one itself (`epmd -daemon`) but does not wait for it to
/// listen, and a node that registers first fails with "register/listen error:
/// econnrefused", which a loaded machine shows. Waits at most `bound`; a failure here is
/// left to `erl`, which says what is wrong.
fn ensure_epmd(bound: Duration) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 4369));
    let up = || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
    if up() {
        return;
    }
    let started = Command::new("epmd")
        .arg("-daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !started.is_ok_and(|s| s.success()) {
        return;
    }
    let start = Instant::now();
    while !up() && start.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The report as JUnit XML (one testsuite, one testcase per check).
pub fn junit(r: &Report) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let failures = r.checks.iter().filter(|c| !c.passed).count();
    let total: u64 = r.checks.iter().map(|c| c.millis).sum();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"beambake-smoke.{}\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">\n",
        esc(&r.name),
        r.checks.len(),
        total as f64 / 1000.0
    );
    x.push_str(&format!(
        "  <properties>\n    <property name=\"accel\" value=\"{}\"/>\n",
        esc(&r.accel)
    ));
    if let Some(why) = &r.accel_reason {
        x.push_str(&format!(
            "    <property name=\"accel_reason\" value=\"{}\"/>\n",
            esc(why)
        ));
    }
    x.push_str("  </properties>\n");
    for c in &r.checks {
        x.push_str(&format!(
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            esc(&r.name),
            esc(&c.name),
            c.millis as f64 / 1000.0
        ));
        if !c.passed {
            x.push_str(&format!("<failure message=\"{}\"/>", esc(&c.message)));
        }
        x.push_str("</testcase>\n");
    }
    if let Some(tail) = &r.console_tail {
        x.push_str(&format!("  <system-out>{}</system-out>\n", esc(tail)));
    }
    x.push_str("</testsuite>\n");
    x
}

pub fn write_junit(r: &Report, path: &Path) -> Result<(), beambake_images::output::OutputError> {
    beambake_images::output::write_bytes(path, junit(r).as_bytes()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn echo_and_http_against_local_servers() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 13];
            s.read_exact(&mut b).unwrap();
            s.write_all(&b).unwrap();
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                assert!(n > 0);
                req.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\necho ok\n").unwrap();
        });
        tcp_echo(addr, "hello there!\n", Duration::from_secs(5)).unwrap();
        http_get(addr, "/", 200, "echo ok", Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_port_nobody_listens_on_fails_within_its_bound() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let start = Instant::now();
        let e = tcp_echo(
            SocketAddr::from(([127, 0, 0, 1], port)),
            "x",
            Duration::from_secs(2),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("connect"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    fn tls_fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../examples/echo/priv/tls")
            .join(name)
    }

    /// A rustls server on 127.0.0.1 with the echo example's test certificate, for
    /// `conns` connections: a request starting with `GET ` gets an HTTP answer, anything
    /// else is echoed. Failed handshakes end only their connection.
    fn tls_server(conns: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(tls_fixture("server.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(tls_fixture("server.key")).unwrap();
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            for _ in 0..conns {
                let (tcp, _) = l.accept().unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                let mut got = Vec::new();
                let mut b = [0u8; 512];
                while let Ok(n @ 1..) = s.read(&mut b) {
                    got.extend_from_slice(&b[..n]);
                    if !got.starts_with(b"GET ") {
                        let _ = s.write_all(&b[..n]);
                    } else if got.ends_with(b"\r\n\r\n") {
                        let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\necho ok over tls\n");
                        s.conn.send_close_notify();
                        let _ = s.flush();
                        break;
                    }
                }
            }
        });
        (addr, t)
    }

    #[test]
    fn tls_echo_and_https_verified_against_the_ca_and_unverified() {
        let (addr, t) = tls_server(4);
        let ca = tls_fixture("ca.pem");
        let bound = Duration::from_secs(10);
        let m = tls_echo(addr, "hello there!\n", Some(&ca), None, bound).unwrap();
        assert!(m.contains("echoed 13 bytes over TLSv1_3"), "{m}");
        assert!(
            m.contains("certificate for 127.0.0.1 verified against ca.pem"),
            "{m}"
        );
        let want = HttpWant {
            path: "/",
            status: 200,
            body_contains: "echo ok over tls",
        };
        let m = https_get(addr, want, Some(&ca), Some("localhost"), bound).unwrap();
        assert!(m.contains("200 over TLSv1_3"), "{m}");
        let m = tls_echo(addr, "x", None, None, bound).unwrap();
        assert!(m.contains("not verified"), "{m}");
        let want = HttpWant {
            path: "/",
            status: 200,
            body_contains: "something else",
        };
        let e = https_get(addr, want, None, None, bound)
            .unwrap_err()
            .to_string();
        assert!(e.contains("body does not contain"), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn tls_certificate_for_another_name_or_another_ca_is_refused() {
        let (addr, t) = tls_server(2);
        let bound = Duration::from_secs(10);
        let e = tls_echo(
            addr,
            "x",
            Some(&tls_fixture("ca.pem")),
            Some("example.org"),
            bound,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("TLS handshake with") && e.contains("not valid for name \"example.org\""),
            "{e}"
        );
        // The server's own certificate is not the CA that issued it.
        let e = tls_echo(addr, "x", Some(&tls_fixture("server.pem")), None, bound)
            .unwrap_err()
            .to_string();
        assert!(e.contains("UnknownIssuer"), "{e}");
        t.join().unwrap();
    }

    /// A TLS check against a plain TCP echo server, and against one that never answers:
    /// both fail with a handshake message, within the bound.
    #[test]
    fn tls_against_a_plain_tcp_port_fails_the_handshake_within_its_bound() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut b) {
                if s.write_all(&b[..n]).is_err() {
                    break;
                }
            }
            // A silent one: reads, never answers, until the client gives up.
            let (mut s, _) = l.accept().unwrap();
            while let Ok(1..) = s.read(&mut b) {}
        });
        let ca = tls_fixture("ca.pem");
        let start = Instant::now();
        let e = tls_echo(addr, "x", Some(&ca), None, Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("TLS handshake with {addr} failed"))
                && e.contains("does not speak TLS"),
            "{e}"
        );
        assert!(start.elapsed() < Duration::from_secs(5), "{e}");
        let start = Instant::now();
        let want = HttpWant {
            path: "/",
            status: 200,
            body_contains: "",
        };
        let e = https_get(addr, want, None, None, Duration::from_secs(2))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TLS handshake with") && e.contains("no answer within 2.0s"),
            "{e}"
        );
        assert!(start.elapsed() < Duration::from_secs(4), "{e:?}");
        t.join().unwrap();
    }

    #[test]
    fn ca_files_missing_or_garbage_are_named() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope.pem");
        let e = tls::load_ca(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read", missing.display())),
            "{e}"
        );
        let garbage = d.path().join("garbage.pem");
        std::fs::write(&garbage, "this is not a certificate\n").unwrap();
        let e = tls::load_ca(&garbage).unwrap_err().to_string();
        assert!(e.contains("garbage.pem: no certificate"), "{e}");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = tls::load_ca(&garbage).unwrap_err().to_string();
        assert!(
            e.contains("garbage.pem: certificate 1 cannot be a trust anchor"),
            "{e}"
        );
        assert_eq!(tls::load_ca(&tls_fixture("ca.pem")).unwrap().len(), 1);
    }

    #[test]
    fn junit_escapes_and_counts() {
        let r = Report {
            name: "a<b".into(),
            accel: "tcg".into(),
            accel_reason: Some("asked for by BEAMBAKE_ACCEL=tcg".into()),
            passed: false,
            ready: false,
            boot_to_ready_ms: None,
            checks: vec![CheckResult {
                name: "tcp_echo:8080".into(),
                passed: false,
                millis: 1500,
                message: "x \"y\" & z".into(),
            }],
            guest_exit: Some(3),
            console_tail: Some("<tail>".into()),
        };
        let x = junit(&r);
        assert!(x.contains("tests=\"1\" failures=\"1\""), "{x}");
        assert!(x.contains("message=\"x &quot;y&quot; &amp; z\""), "{x}");
        assert!(x.contains("&lt;tail&gt;"), "{x}");
        assert!(
            x.contains(
                "<property name=\"accel_reason\" value=\"asked for by BEAMBAKE_ACCEL=tcg\"/>"
            ),
            "{x}"
        );
    }
}
