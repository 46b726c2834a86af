//! Smoke checks against a booted guest: TCP echo round trip, HTTP GET, Erlang
//! distribution (a host node pings the guest node and runs an `rpc:call`). Every check is
//! bounded in time; the first one also waits (bounded) for the guest to become ready and
//! notices when the guest ends instead (reporting its exit status and console tail).
//!
//! Owns: the checks, the report and its JUnit XML form.
//! Must not: start or configure guests (it is handed a running [`Guest`]), or touch
//! any network but the one it is pointed at.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::boot::guest::Guest;
use crate::boot::qemu;
use crate::recipe::Check;

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
    pub passed: bool,
    /// From VM start to the first check passing.
    pub boot_to_ready_ms: Option<u64>,
    pub checks: Vec<CheckResult>,
    /// The guest's own exit status, when it ended during the run.
    pub guest_exit: Option<i32>,
    pub console_tail: Option<String>,
}

/// Where the checks connect, and what they need.
pub struct Target<'a> {
    /// Address that reaches the guest's services (its IP on a tap, 127.0.0.1 with user
    /// networking).
    pub addr: IpAddr,
    /// Host address the checking node runs as (tap mode), for distribution checks.
    pub host: IpAddr,
    pub node: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub ready_timeout: Duration,
    pub check_timeout: Duration,
}

pub fn check_name(c: &Check) -> String {
    match c {
        Check::TcpEcho { port, .. } => format!("tcp_echo:{port}"),
        Check::Http { port, path, .. } => format!("http:{port}{path}"),
        Check::Distribution {} => "distribution".into(),
    }
}

/// Runs `checks` in order. The first is retried until the guest is ready (or ends, or
/// `ready_timeout` passes); the others run once, each within `check_timeout`.
pub fn run(name: &str, accel: &str, guest: &mut Guest, checks: &[Check], t: &Target) -> Report {
    let mut report = Report {
        name: name.into(),
        accel: accel.into(),
        passed: false,
        boot_to_ready_ms: None,
        checks: vec![],
        guest_exit: None,
        console_tail: None,
    };
    for (i, check) in checks.iter().enumerate() {
        let start = Instant::now();
        let outcome = if i == 0 {
            wait_ready(guest, check, t)
        } else {
            run_one(check, t, t.check_timeout)
        };
        let millis = start.elapsed().as_millis() as u64;
        let (passed, message) = match outcome {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        if i == 0 && passed {
            report.boot_to_ready_ms = Some(guest.started.elapsed().as_millis() as u64);
        }
        report.checks.push(CheckResult {
            name: check_name(check),
            passed,
            millis,
            message,
        });
        if let Some(st) = guest.exited() {
            report.guest_exit = qemu::guest_status(st.code());
            break;
        }
    }
    // Checks that never ran because the guest ended are failures too.
    for check in checks.iter().skip(report.checks.len()) {
        report.checks.push(CheckResult {
            name: check_name(check),
            passed: false,
            millis: 0,
            message: "not run: the guest ended".into(),
        });
    }
    report.passed = !report.checks.is_empty() && report.checks.iter().all(|c| c.passed);
    if !report.passed {
        report.console_tail = Some(guest.console_tail(40));
    }
    report
}

fn wait_ready(guest: &mut Guest, check: &Check, t: &Target) -> Result<String, String> {
    let start = Instant::now();
    let mut last = String::from("no attempt");
    loop {
        if let Some(st) = guest.exited() {
            return Err(match qemu::guest_status(st.code()) {
                Some(s) => format!("the guest ended before it was ready: the release exited with status {s} (last attempt: {last})"),
                None => format!("the VM ended before the guest was ready ({st}; last attempt: {last})"),
            });
        }
        let left = t.ready_timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!(
                "not ready after {}s (last attempt: {last})",
                t.ready_timeout.as_secs()
            ));
        }
        match run_one(check, t, left.min(Duration::from_secs(5))) {
            Ok(m) => return Ok(m),
            Err(m) => last = m,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_one(check: &Check, t: &Target, bound: Duration) -> Result<String, String> {
    match check {
        Check::TcpEcho { port, payload } => {
            tcp_echo(SocketAddr::new(t.addr, *port), payload, bound)
        }
        Check::Http {
            port,
            path,
            status,
            body_contains,
        } => http_get(
            SocketAddr::new(t.addr, *port),
            path,
            *status,
            body_contains,
            bound,
        ),
        Check::Distribution {} => distribution(t, bound),
    }
}

fn connect(addr: SocketAddr, bound: Duration) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, bound.max(Duration::from_millis(100)))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(bound.max(Duration::from_millis(100))))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(bound.max(Duration::from_millis(100))))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

pub fn tcp_echo(addr: SocketAddr, payload: &str, bound: Duration) -> Result<String, String> {
    let mut s = connect(addr, bound)?;
    s.write_all(payload.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back)
        .map_err(|e| format!("read echo from {addr}: {e}"))?;
    if back != payload.as_bytes() {
        return Err(format!(
            "{addr} answered {:?}, expected {payload:?}",
            String::from_utf8_lossy(&back)
        ));
    }
    Ok(format!("{addr} echoed {} bytes", payload.len()))
}

pub fn http_get(
    addr: SocketAddr,
    path: &str,
    want_status: u16,
    body_contains: &str,
    bound: Duration,
) -> Result<String, String> {
    let mut s = connect(addr, bound)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.ip()
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut resp = Vec::new();
    if let Err(e) = s.take(1 << 20).read_to_end(&mut resp) {
        // A reset after a complete answer still counts as the answer.
        if resp.is_empty() {
            return Err(format!("read from {addr}: {e}"));
        }
    }
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "{addr}{path}: not an HTTP response: {:?}",
                text.chars().take(80).collect::<String>()
            )
        })?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    if status != want_status {
        return Err(format!(
            "{addr}{path}: status {status}, expected {want_status}"
        ));
    }
    if !body.contains(body_contains) {
        return Err(format!(
            "{addr}{path}: body does not contain {body_contains:?}: {:?}",
            body.chars().take(200).collect::<String>()
        ));
    }
    Ok(format!("{addr}{path}: {status}"))
}

/// A host node (`beambake_check@HOST`) pings the guest node and runs
/// `rpc:call(Node, erlang, system_info, [otp_release])`.
fn distribution(t: &Target, bound: Duration) -> Result<String, String> {
    let (Some(node), Some(cookie)) = (t.node, t.cookie) else {
        return Err("the image has no node name and cookie".into());
    };
    let eval = format!(
        "R = case net_adm:ping('{node}') of \
           pong -> {{pong, rpc:call('{node}', erlang, system_info, [otp_release]), \
                    rpc:call('{node}', erlang, node, [])}}; \
           pang -> pang end, \
         io:format(\"BEAMBAKE_RESULT ~0p~n\", [R]), halt()."
    );
    let mut cmd = Command::new("erl");
    cmd.args([
        "-noshell",
        "-noinput",
        "-name",
        &format!("beambake_check@{}", t.host),
    ])
    .args(["-setcookie", cookie, "-kernel", "net_ticktime", "10"])
    .args(["-eval", &eval])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    crate::net::dies_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("starting erl (apt-get install erlang-nox): {e}"))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < bound => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "host node got no answer from {node} within {}s",
                    bound.as_secs()
                ));
            }
        }
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("BEAMBAKE_RESULT "))
        .unwrap_or("");
    let expect = "BEAMBAKE_RESULT {pong,\"";
    if line.starts_with(expect) && line.contains(&format!("'{node}'}}")) {
        Ok(format!("net_adm:ping -> pong; rpc:call -> {}", &line[16..]))
    } else if line.contains("pang") {
        Err(format!("net_adm:ping('{node}') -> pang"))
    } else {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        Err(format!("unexpected host node output: {out}{err}"))
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

pub fn write_junit(r: &Report, path: &Path) -> Result<(), crate::output::OutputError> {
    crate::output::write_bytes(path, junit(r).as_bytes()).map(|_| ())
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
        .unwrap_err();
        assert!(e.contains("connect"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn junit_escapes_and_counts() {
        let r = Report {
            name: "a<b".into(),
            accel: "tcg".into(),
            passed: false,
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
    }
}
