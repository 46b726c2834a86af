//! `beambake libvirt-port URI`: a libvirt connection driven from Erlang as a port program
//! (the Erlang side is `beambake_libvirt`, a gen_server owning the port).
//!
//! The wire is [`beambake_vm::port::codec`]: `{packet, 4}` frames of external-term-format
//! terms on stdin/stdout. Opening the connection is the port's start: its first packet is
//! `{0, {ok, Uri}}` or `{0, {error, {Code, Message}}}` (then it exits with status 1).
//! Then each request `{Ref, Call}` (`Ref` a positive integer chosen by the caller) gets
//! one reply `{Ref, {ok, Value}}` or `{Ref, {error, {Code, Message}}}`: `Code` is
//! libvirt's error number (`virErrorNumber`), `Message` a binary. Calls (`Name` a binary
//! or a string, the domain's name):
//!
//! | call | value |
//! |---|---|
//! | `list_domains` | `[{Id \| undefined, Name}]`, active and inactive |
//! | `{define_xml, Xml}` | the domain (below) |
//! | `{create, Name}`, `{lookup_by_name, Name}`, `{lookup_by_id, Id}` | the domain |
//! | `{get_info, Name}` | `#{state, max_mem_kib, memory_kib, vcpus, cpu_time_ns}` |
//! | `{get_xml_desc, Name}` | the XML, a binary |
//! | `{suspend \| resume \| shutdown \| destroy \| undefine, Name}` | `Name` |
//!
//! A domain is `#{name => Name, id => Id | undefined, uuid => Uuid, active => boolean()}`;
//! `state` is `nostate`, `running`, `blocked`, `paused`, `shutdown`, `shutoff`,
//! `crashed` or `pmsuspended`. A call the port does not know, or with arguments of the
//! wrong type, gets `VIR_ERR_NO_SUPPORT` or `VIR_ERR_INVALID_ARG`.
//!
//! Each call runs on a thread of its own, so a slow one (`create` under TCG, `shutdown`)
//! delays nothing else; replies come in the order calls finish. The port ends when its
//! standard input closes (the Erlang side closed the port or died), without waiting for
//! calls still running.
//!
//! Owns: the wire's calls and values, and their mapping onto libvirt (behind the cargo
//! feature `libvirt`: without it the port refuses to start, saying why). Must not: know
//! beambake's images, or keep anything besides the one connection.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use beambake_vm::port::codec::{self, CodecError, Term};

/// libvirt's `VIR_ERR_INTERNAL_ERROR`.
pub const VIR_ERR_INTERNAL_ERROR: i32 = 1;
/// libvirt's `VIR_ERR_NO_SUPPORT`: the port's answer to an unknown call.
pub const VIR_ERR_NO_SUPPORT: i32 = 3;
/// libvirt's `VIR_ERR_INVALID_ARG`: the port's answer to a call with bad arguments.
pub const VIR_ERR_INVALID_ARG: i32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error(transparent)]
    NotBuilt(#[from] crate::NotBuilt),
    #[error("libvirt-port: {0}")]
    Codec(#[from] CodecError),
    #[error("libvirt-port: writing to Erlang: {0}")]
    Write(#[source] std::io::Error),
    #[error("libvirt-port: cannot connect to {uri}: {message} (libvirt error {code})")]
    Connect {
        uri: String,
        code: i32,
        message: String,
    },
}

/// One call of the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    ListDomains,
    DefineXml(String),
    Create(String),
    LookupByName(String),
    LookupById(u32),
    GetInfo(String),
    GetXmlDesc(String),
    Suspend(String),
    Resume(String),
    Shutdown(String),
    Destroy(String),
    Undefine(String),
}

/// A call's outcome: a value, or libvirt's error number and message.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ok(Term),
    Err { code: i32, message: String },
}

impl Reply {
    pub fn invalid(message: impl Into<String>) -> Reply {
        Reply::Err {
            code: VIR_ERR_INVALID_ARG,
            message: message.into(),
        }
    }
}

/// Decodes `{Ref, Call}`: the reference, and the call or why it is refused. `Err` when
/// the term is not even `{Ref, _}` with an integer `Ref` (nothing to reply to).
pub fn decode_request(t: &Term) -> Result<(i64, Result<Call, Reply>), String> {
    let (r, call) = match codec::as_tuple(t) {
        Some([r, call]) => (r, call),
        _ => return Err(format!("not a {{Ref, Call}} request: {t}")),
    };
    let r = codec::as_int(r).ok_or_else(|| format!("the reference is not an integer: {t}"))?;
    Ok((r, decode_call(call)))
}

fn decode_call(t: &Term) -> Result<Call, Reply> {
    if codec::as_atom(t) == Some("list_domains") {
        return Ok(Call::ListDomains);
    }
    let (name, arg) = match codec::as_tuple(t) {
        Some([name, arg]) => match codec::as_atom(name) {
            Some(n) => (n, arg),
            None => return Err(unknown(t)),
        },
        _ => return Err(unknown(t)),
    };
    let text = |what: &str| -> Result<String, Reply> {
        codec::as_bytes(arg)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Reply::invalid(format!(
                    "{name}: the {what} must be a UTF-8 binary or string, not {arg}"
                ))
            })
    };
    Ok(match name {
        "define_xml" => Call::DefineXml(text("XML")?),
        "create" => Call::Create(text("domain name")?),
        "lookup_by_name" => Call::LookupByName(text("domain name")?),
        "lookup_by_id" => Call::LookupById(
            codec::as_int(arg)
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| Reply::invalid(format!("lookup_by_id: not a domain id: {arg}")))?,
        ),
        "get_info" => Call::GetInfo(text("domain name")?),
        "get_xml_desc" => Call::GetXmlDesc(text("domain name")?),
        "suspend" => Call::Suspend(text("domain name")?),
        "resume" => Call::Resume(text("domain name")?),
        "shutdown" => Call::Shutdown(text("domain name")?),
        "destroy" => Call::Destroy(text("domain name")?),
        "undefine" => Call::Undefine(text("domain name")?),
        _ => return Err(unknown(t)),
    })
}

fn unknown(t: &Term) -> Reply {
    Reply::Err {
        code: VIR_ERR_NO_SUPPORT,
        message: format!(
            "unknown call {t}: list_domains, {{define_xml, Xml}}, {{create | lookup_by_name | get_info | \
             get_xml_desc | suspend | resume | shutdown | destroy | undefine, Name}}, {{lookup_by_id, Id}}"
        ),
    }
}

/// `{Ref, {ok, Value}}` or `{Ref, {error, {Code, Message}}}`.
pub fn reply_term(r: i64, reply: Reply) -> Term {
    let body = match reply {
        Reply::Ok(v) => codec::tagged("ok", v),
        Reply::Err { code, message } => codec::tagged(
            "error",
            codec::tuple(vec![
                codec::int(i64::from(code)),
                codec::binary(message.as_bytes()),
            ]),
        ),
    };
    codec::tuple(vec![codec::int(r), body])
}

/// A map term from `(key atom, value)` pairs.
pub fn map(pairs: Vec<(&str, Term)>) -> Term {
    let m: std::collections::HashMap<Term, Term> = pairs
        .into_iter()
        .map(|(k, v)| (codec::atom(k), v))
        .collect();
    Term::from(eetf::Map::from(m))
}

/// What answers calls: libvirt ([`connect`]), or a stand-in in tests.
pub trait Backend: Send + Sync + 'static {
    fn call(&self, call: Call) -> Reply;
}

/// Calls still running when the input ended.
pub struct Served {
    pub in_flight: Vec<JoinHandle<()>>,
}

/// Answers requests from `input` on `output` until `input` ends; each call on a thread
/// of its own. A request that is not `{Ref, Call}` is reported on stderr and skipped.
pub fn serve<B: Backend>(
    backend: Arc<B>,
    mut input: impl Read,
    output: impl Write + Send + 'static,
) -> Result<Served, PortError> {
    let out = Arc::new(Mutex::new(output));
    let mut in_flight: Vec<JoinHandle<()>> = Vec::new();
    while let Some(t) = codec::read_term(&mut input)? {
        in_flight.retain(|h| !h.is_finished());
        let (r, call) = match decode_request(&t) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("beambake libvirt-port: {e}");
                continue;
            }
        };
        let (backend, out) = (Arc::clone(&backend), Arc::clone(&out));
        in_flight.push(std::thread::spawn(move || {
            let reply = match call {
                Ok(c) => backend.call(c),
                Err(refused) => refused,
            };
            // A failed write means Erlang is gone: stdin ends next and the port with it.
            if let Ok(mut w) = out.lock() {
                let _ = codec::write_term(&mut *w, &reply_term(r, reply));
            }
        }));
    }
    Ok(Served { in_flight })
}

/// The port program: connects to `uri`, says so (ref 0), serves until stdin closes.
pub fn run(uri: &str) -> Result<(), PortError> {
    let mut stdout = std::io::stdout();
    match connect(uri) {
        Ok(backend) => {
            codec::write_term(
                &mut stdout,
                &reply_term(0, Reply::Ok(codec::binary(uri.as_bytes()))),
            )
            .map_err(PortError::Write)?;
            serve(Arc::new(backend), std::io::stdin().lock(), stdout)?;
            Ok(())
        }
        Err(e) => {
            let (code, message) = match &e {
                PortError::Connect { code, message, .. } => (*code, message.clone()),
                other => (VIR_ERR_INTERNAL_ERROR, other.to_string()),
            };
            codec::write_term(&mut stdout, &reply_term(0, Reply::Err { code, message }))
                .map_err(PortError::Write)?;
            Err(e)
        }
    }
}

#[cfg(not(feature = "libvirt"))]
fn connect(_uri: &str) -> Result<Unbuilt, PortError> {
    Err(crate::NotBuilt.into())
}

#[cfg(not(feature = "libvirt"))]
struct Unbuilt;

#[cfg(not(feature = "libvirt"))]
impl Backend for Unbuilt {
    fn call(&self, _: Call) -> Reply {
        Reply::Err {
            code: VIR_ERR_NO_SUPPORT,
            message: crate::NotBuilt.to_string(),
        }
    }
}

#[cfg(feature = "libvirt")]
pub use with_libvirt::{connect, Libvirt};

#[cfg(feature = "libvirt")]
mod with_libvirt {
    use super::{codec, map, Backend, Call, PortError, Reply, Term};
    use virt::connect::Connect;
    use virt::domain::{Domain, DomainState};
    use virt::error::Error;

    /// One libvirt connection (thread-safe: libvirt serialises what it must).
    pub struct Libvirt {
        conn: Connect,
    }

    /// Opens `uri` read-write. libvirt's errors go on the wire only (not also to stderr).
    pub fn connect(uri: &str) -> Result<Libvirt, PortError> {
        virt::error::clear_error_callback();
        Connect::open(Some(uri))
            .map(|conn| Libvirt { conn })
            .map_err(|e| PortError::Connect {
                uri: uri.to_string(),
                code: code(&e),
                message: e.message().to_string(),
            })
    }

    fn code(e: &Error) -> i32 {
        e.code().to_raw() as i32
    }

    fn err(e: Error) -> Reply {
        Reply::Err {
            code: code(&e),
            message: e.message().to_string(),
        }
    }

    fn name_term(d: &Domain) -> Result<Term, Error> {
        Ok(codec::binary(d.name()?.as_bytes()))
    }

    fn id_term(d: &Domain) -> Term {
        match d.id() {
            Some(id) => codec::int(i64::from(id)),
            None => codec::atom("undefined"),
        }
    }

    fn domain_term(d: &Domain) -> Result<Term, Error> {
        Ok(map(vec![
            ("name", name_term(d)?),
            ("id", id_term(d)),
            ("uuid", codec::binary(d.uuid_string()?.as_bytes())),
            (
                "active",
                codec::atom(if d.is_active()? { "true" } else { "false" }),
            ),
        ]))
    }

    fn state_atom(s: virt::domain::DomainStateEnum) -> Term {
        codec::atom(match s.known() {
            Some(DomainState::NoState) => "nostate",
            Some(DomainState::Running) => "running",
            Some(DomainState::Blocked) => "blocked",
            Some(DomainState::Paused) => "paused",
            Some(DomainState::Shutdown) => "shutdown",
            Some(DomainState::Shutoff) => "shutoff",
            Some(DomainState::Crashed) => "crashed",
            Some(DomainState::PMSuspended) => "pmsuspended",
            None => "unknown",
        })
    }

    fn u64_term(n: u64) -> Term {
        codec::int(i64::try_from(n).unwrap_or(i64::MAX))
    }

    impl Libvirt {
        fn by_name(&self, name: &str) -> Result<Domain, Error> {
            self.conn.lookup_domain_by_name(name)
        }

        fn act(
            &self,
            name: &str,
            f: impl FnOnce(&Domain) -> Result<(), Error>,
        ) -> Result<Term, Error> {
            let d = self.by_name(name)?;
            f(&d)?;
            Ok(codec::binary(name.as_bytes()))
        }

        fn answer(&self, call: Call) -> Result<Term, Error> {
            match call {
                Call::ListDomains => {
                    let all = self.conn.list_all_domains(0)?;
                    let mut v = Vec::with_capacity(all.len());
                    for d in &all {
                        v.push(codec::tuple(vec![id_term(d), name_term(d)?]));
                    }
                    Ok(codec::list(v))
                }
                Call::DefineXml(xml) => domain_term(&self.conn.define_domain_xml(&xml)?),
                Call::Create(name) => {
                    let d = self.by_name(&name)?;
                    d.create()?;
                    domain_term(&d)
                }
                Call::LookupByName(name) => domain_term(&self.by_name(&name)?),
                Call::LookupById(id) => domain_term(&self.conn.lookup_domain_by_id(id)?),
                Call::GetInfo(name) => {
                    let i = self.by_name(&name)?.info()?;
                    Ok(map(vec![
                        ("state", state_atom(i.state)),
                        ("max_mem_kib", u64_term(i.max_mem)),
                        ("memory_kib", u64_term(i.memory)),
                        ("vcpus", codec::int(i64::from(i.nr_virt_cpu))),
                        ("cpu_time_ns", u64_term(i.cpu_time)),
                    ]))
                }
                Call::GetXmlDesc(name) => {
                    Ok(codec::binary(self.by_name(&name)?.xml_desc(0)?.as_bytes()))
                }
                Call::Suspend(name) => self.act(&name, Domain::suspend),
                Call::Resume(name) => self.act(&name, Domain::resume),
                Call::Shutdown(name) => self.act(&name, Domain::shutdown),
                Call::Destroy(name) => self.act(&name, Domain::destroy),
                Call::Undefine(name) => self.act(&name, Domain::undefine),
            }
        }
    }

    impl Backend for Libvirt {
        fn call(&self, call: Call) -> Reply {
            match self.answer(call) {
                Ok(v) => Reply::Ok(v),
                Err(e) => err(e),
            }
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_ports_own_codes_are_libvirts() {
            assert_eq!(
                super::super::VIR_ERR_INTERNAL_ERROR,
                virt::sys::VIR_ERR_INTERNAL_ERROR as i32
            );
            assert_eq!(
                super::super::VIR_ERR_NO_SUPPORT,
                virt::sys::VIR_ERR_NO_SUPPORT as i32
            );
            assert_eq!(
                super::super::VIR_ERR_INVALID_ARG,
                virt::sys::VIR_ERR_INVALID_ARG as i32
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(r: i64, call: Term) -> Term {
        codec::tuple(vec![codec::int(r), call])
    }

    fn call(name: &str, arg: Term) -> Term {
        codec::tuple(vec![codec::atom(name), arg])
    }

    #[test]
    fn requests_decode_and_bad_ones_are_refused_with_libvirts_codes() {
        let ok = |t: Term| decode_request(&t).unwrap().1.unwrap();
        assert_eq!(ok(req(1, codec::atom("list_domains"))), Call::ListDomains);
        assert_eq!(
            ok(req(2, call("create", codec::binary(b"vm")))),
            Call::Create("vm".into())
        );
        // A string sent as a list is a name too.
        let s = Term::decode(&[131u8, 107, 0, 2, b'v', b'm'][..]).unwrap();
        assert_eq!(ok(req(3, call("destroy", s))), Call::Destroy("vm".into()));
        assert_eq!(
            ok(req(4, call("lookup_by_id", codec::int(7)))),
            Call::LookupById(7)
        );

        let refused = |t: Term| match decode_request(&t).unwrap().1 {
            Err(Reply::Err { code, message }) => (code, message),
            other => panic!("{other:?}"),
        };
        let (code, msg) = refused(req(5, codec::atom("reboot")));
        assert_eq!(code, VIR_ERR_NO_SUPPORT);
        assert!(msg.contains("unknown call 'reboot'"), "{msg}");
        let (code, msg) = refused(req(6, call("lookup_by_id", codec::int(-1))));
        assert_eq!(code, VIR_ERR_INVALID_ARG);
        assert!(msg.contains("not a domain id"), "{msg}");
        let (code, _) = refused(req(7, call("create", codec::int(1))));
        assert_eq!(code, VIR_ERR_INVALID_ARG);

        assert!(decode_request(&codec::atom("list_domains")).is_err());
        assert!(decode_request(&req(0, codec::atom("x")))
            .unwrap()
            .1
            .is_err());
        assert!(decode_request(&codec::tuple(vec![
            codec::atom("r"),
            codec::atom("list_domains")
        ]))
        .is_err());
    }

    #[test]
    fn replies_are_the_wires_terms() {
        let t = reply_term(9, Reply::Ok(codec::atom("x")));
        assert_eq!(t.to_string(), "{9,{'ok','x'}}");
        let t = reply_term(
            10,
            Reply::Err {
                code: 42,
                message: "Domain not found".into(),
            },
        );
        let el = codec::as_tuple(&t).unwrap();
        assert_eq!(codec::as_int(&el[0]), Some(10));
        let body = codec::as_tuple(&el[1]).unwrap();
        assert_eq!(codec::as_atom(&body[0]), Some("error"));
        let e = codec::as_tuple(&body[1]).unwrap();
        assert_eq!(codec::as_int(&e[0]), Some(42));
        assert_eq!(codec::as_bytes(&e[1]), Some(b"Domain not found".to_vec()));
    }

    /// Answers `create` only when told to, everything else at once.
    struct Gate(Mutex<std::sync::mpsc::Receiver<()>>);

    impl Backend for Gate {
        fn call(&self, call: Call) -> Reply {
            if let Call::Create(_) = call {
                let _ = self.0.lock().unwrap().recv();
            }
            Reply::Ok(codec::binary(format!("{call:?}").as_bytes()))
        }
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_slow_call_delays_no_other_and_the_port_ends_with_its_input() {
        let mut input = Vec::new();
        codec::write_term(&mut input, &req(1, call("create", codec::binary(b"slow")))).unwrap();
        codec::write_term(&mut input, &codec::atom("garbage")).unwrap();
        codec::write_term(&mut input, &req(2, codec::atom("list_domains"))).unwrap();
        codec::write_term(&mut input, &req(3, codec::atom("nonsense"))).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let out = Shared::default();
        let served = serve(Arc::new(Gate(Mutex::new(rx))), &input[..], out.clone()).unwrap();
        // Input ended while `create` still waits: the others are answered meanwhile.
        let refs = |out: &Shared| -> Vec<i64> {
            let bytes = out.0.lock().unwrap().clone();
            let mut r = &bytes[..];
            let mut v = Vec::new();
            while let Some(t) = codec::read_term(&mut r).unwrap() {
                v.push(codec::as_int(&codec::as_tuple(&t).unwrap()[0]).unwrap());
            }
            v
        };
        // The two quick calls are answered while `create` is held back...
        while refs(&out).len() < 2 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!served.in_flight[0].is_finished());
        // ...and `create` once let go.
        tx.send(()).unwrap();
        for h in served.in_flight {
            h.join().unwrap();
        }
        let got = refs(&out);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[2], 1, "the slow call answers last: {got:?}");
    }

    #[cfg(feature = "libvirt")]
    #[test]
    fn libvirts_test_driver_answers_through_the_backend() {
        // libvirt's own in-process test hypervisor: the real client library, no daemon.
        let lv = connect("test:///default").unwrap();
        let domains = match lv.call(Call::ListDomains) {
            Reply::Ok(Term::List(l)) => l.elements,
            e => panic!("{e:?}"),
        };
        let names: Vec<Vec<u8>> = domains
            .iter()
            .filter_map(|d| codec::as_bytes(&codec::as_tuple(d)?[1]))
            .collect();
        assert_eq!(names, vec![b"test".to_vec()], "{domains:?}");
        match lv.call(Call::GetInfo("test".into())) {
            Reply::Ok(t) => assert!(t.to_string().contains("running"), "{t}"),
            e => panic!("{e:?}"),
        }
        match lv.call(Call::Suspend("test".into())) {
            Reply::Ok(_) => {}
            e => panic!("{e:?}"),
        }
        match lv.call(Call::GetInfo("test".into())) {
            Reply::Ok(t) => assert!(t.to_string().contains("paused"), "{t}"),
            e => panic!("{e:?}"),
        }
        match lv.call(Call::LookupByName("no-such-domain".into())) {
            Reply::Err { code, message } => {
                assert_eq!(code, virt::sys::VIR_ERR_NO_DOMAIN as i32, "{message}");
            }
            ok => panic!("{ok:?}"),
        }
        let e = match connect("nosuchdriver:///x") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("connected to nosuchdriver"),
        };
        assert!(e.contains("nosuchdriver:///x"), "{e}");
    }
}
