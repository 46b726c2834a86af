//! TLS for the smoke checks (`tls_echo`, `https`): CA files, the rustls client (ring
//! provider), and a connection whose connect, handshake and exchange together stay
//! within one deadline, whatever the other end does (a plain TCP server, silence).
//!
//! Owns: reading and judging CA files, the client configuration (the server's
//! certificate verified against the CA and the server name, or explicitly not).
//! Must not: know what a check expects of the answer (that is [`super`]'s).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, StreamOwned};

use beambake_recipe::Check;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read the CA file: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a PEM CA file: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("{path}: no certificate in the CA file (want PEM: -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: certificate {index} cannot be a trust anchor: {message}")]
    Anchor {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error("TLS client configuration: {0}")]
    Config(String),
    #[error("server name {name:?}: {source}")]
    ServerName {
        name: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("TLS to {addr}: {source}")]
    Client {
        addr: SocketAddr,
        #[source]
        source: rustls::Error,
    },
    #[error("connect {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// `why` words the I/O error ([`explain`]).
    #[error("TLS handshake with {addr} failed: {why}")]
    Handshake { addr: SocketAddr, why: String },
}

/// The trust anchors in a PEM file (one or more certificates).
pub fn load_ca(path: &Path) -> Result<RootCertStore, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        let cert = cert.map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::Anchor {
            path: path.to_path_buf(),
            index: i + 1,
            message: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// Reads every CA file the checks name, so a missing or garbage one is an error before
/// anything is built or booted.
pub fn check_cas(checks: &[Check]) -> Result<(), TlsError> {
    for c in checks {
        if let Some(ca) = c.tls().and_then(|t| t.ca) {
            load_ca(ca)?;
        }
    }
    Ok(())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client configuration: the server's certificate must chain to `ca`'s anchors, or,
/// with `None`, any certificate is accepted (the handshake's signatures are still
/// checked, so the peer holds the certificate's key).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = match ca {
        Some(ca) => builder
            .with_root_certificates(load_ca(ca)?)
            .with_no_client_auth(),
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// `verify = false`: any certificate, for any name.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TCP stream that gives up at a deadline: every read and write waits at most for
/// what is left of it.
pub struct Bounded {
    tcp: TcpStream,
    deadline: Instant,
}

impl Bounded {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(left)
    }
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_write_timeout(Some(left))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// An established TLS session, bounded by its deadline.
pub struct Session {
    pub stream: StreamOwned<ClientConnection, Bounded>,
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
    /// What was verified, for the check's message.
    pub verified: String,
}

/// Connects to `addr` and completes a TLS handshake before `deadline`. The certificate
/// is judged as `ca` says (see [`client_config`]), for `server_name` (default: `addr`'s
/// IP address).
pub fn connect(
    addr: SocketAddr,
    ca: Option<&Path>,
    server_name: Option<&str>,
    deadline: Instant,
) -> Result<Session, TlsError> {
    let config = client_config(ca)?;
    let name_text = server_name
        .map(str::to_string)
        .unwrap_or_else(|| addr.ip().to_string());
    let name = ServerName::try_from(name_text.clone()).map_err(|source| TlsError::ServerName {
        name: name_text.clone(),
        source,
    })?;
    let mut conn =
        ClientConnection::new(config, name).map_err(|source| TlsError::Client { addr, source })?;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let tcp = TcpStream::connect_timeout(&addr, wait)
        .map_err(|source| TlsError::Connect { addr, source })?;
    let mut sock = Bounded { tcp, deadline };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            return Err(TlsError::Handshake {
                addr,
                why: explain(&e, deadline, wait),
            });
        }
    }
    let version = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_else(|| "TLS".into());
    let verified = match ca {
        Some(ca) => format!(
            "certificate for {name_text} verified against {}",
            ca.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_else(|| ca.to_string_lossy())
        ),
        None => "certificate not verified: verify = false".into(),
    };
    Ok(Session {
        stream: StreamOwned::new(conn, sock),
        version,
        verified,
    })
}

/// An I/O error of a TLS exchange, in words: a timeout says how long was waited, a peer
/// that does not speak TLS is named as such.
pub fn explain(e: &io::Error, deadline: Instant, bound: Duration) -> String {
    let timed_out = matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) || Instant::now() >= deadline;
    if timed_out {
        return format!(
            "no answer within {:.1}s (does the port speak TLS?)",
            bound.as_secs_f64()
        );
    }
    let not_tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidMessage(_)
                    | rustls::Error::InappropriateMessage { .. }
                    | rustls::Error::InappropriateHandshakeMessage { .. }
            )
        });
    if not_tls {
        format!("{e} (the port does not speak TLS)")
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        format!("{e}: the server closed the connection (does the port speak TLS?)")
    } else {
        e.to_string()
    }
}
