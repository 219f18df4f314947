//! One TLS connection to a KMIP server: client-certificate authentication
//! (rustls with the aws-lc-rs provider), timeouts, and framing of one TTLV
//! message per request and per response.
//!
//! Every step (name resolution, connect, handshake, each read and write)
//! waits at most its own limit *and* what is left of the [`Deadline`] of
//! the operation it serves, so no server, resolver or network can hold a
//! caller past that deadline however it misbehaves.
//!
//! Knows sockets and certificates; nothing of KMIP operations.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use zeroize::Zeroizing;

use super::ttlv;

/// Where a KMIP server is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `HOST:PORT` as configured; HOST is also the TLS server name.
    pub server: String,
    /// Limit for the TCP connect, per resolved address.
    pub connect_timeout: Duration,
    /// Limit for each read or write of a request or response, and for the
    /// TLS handshake.
    pub request_timeout: Duration,
}

/// When one provider operation (all its KMIP requests, their retries and
/// backoff, DNS included) must be over.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// The instant. Immutable.
    at: Instant,
    /// The whole allowance, for messages. Immutable.
    budget: Duration,
}

impl Deadline {
    /// `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Self {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// What is left, or [`TransportError::DeadlinePassed`] when nothing is.
    pub fn remaining(&self) -> Result<Duration, TransportError> {
        match self.at.saturating_duration_since(Instant::now()) {
            Duration::ZERO => Err(TransportError::DeadlinePassed(self.budget)),
            left => Ok(left),
        }
    }

    /// `limit`, cut to what is left: the wait allowed for one step.
    pub fn cap(&self, limit: Duration) -> Result<Duration, TransportError> {
        Ok(self.remaining()?.min(limit))
    }
}

/// The certificate files of a KMIP client identity.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// The client certificate (PEM), possibly followed by its chain.
    pub cert: PathBuf,
    /// The client's private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

/// Why the client configuration could not be built from the files.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Why talking to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// HOST:PORT is malformed or does not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The operation's overall deadline passed (DNS, connect, handshake,
    /// requests and retries together).
    #[error("no answer within {0:?} (operation timeout, DNS, connect and retries included)")]
    DeadlinePassed(Duration),
    /// Nothing accepted the TCP connection.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// A read or write took longer than the request timeout.
    #[error("no answer within {0:?} (request timeout)")]
    Timeout(Duration),
    /// The TLS layer refused the peer, or the peer refused us.
    #[error("TLS: {0}")]
    Tls(TlsFailure),
    /// The connection broke.
    #[error("connection lost: {0}")]
    Io(std::io::Error),
    /// The server sent something that is not one TTLV message.
    #[error("malformed message from the server: {0}")]
    Framing(#[from] ttlv::TtlvError),
}

/// The TLS failures a user can act on, each with its own message.
#[derive(Debug)]
pub enum TlsFailure {
    /// The server's certificate does not chain to our CA file.
    ServerNotTrusted(String),
    /// The server closed or alerted during the handshake: it did not accept
    /// our client certificate (wrong CA, missing clientAuth usage).
    ClientRejected(String),
    /// Anything else rustls reports.
    Other(String),
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsFailure::ServerNotTrusted(why) => write!(
                f,
                "the server's certificate is not trusted ({why}): is --ca the CA that signed the KMS certificate, and does the certificate name the host in --server?"
            ),
            TlsFailure::ClientRejected(why) => write!(
                f,
                "the server refused our client certificate ({why}): is --cert signed by a CA the KMS trusts, with the clientAuth extended key usage, and does --key belong to it?"
            ),
            TlsFailure::Other(why) => f.write_str(why),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.into(),
        source,
    })
}

fn invalid(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::Invalid {
        path: path.into(),
        reason: reason.into(),
    }
}

impl ClientIdentity {
    /// Loads the files into a rustls client configuration (TLS 1.2 and
    /// 1.3, aws-lc-rs provider: the AWS-LC that already seals file content,
    /// so no second crypto library is built).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, IdentityError> {
        let mut roots = RootCertStore::empty();
        let ca_pem = read_file(&self.ca)?;
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert =
                cert.map_err(|e| invalid(&self.ca, format!("not a PEM certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| invalid(&self.ca, format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(invalid(&self.ca, "holds no PEM certificate"));
        }
        let cert_pem = read_file(&self.cert)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&self.cert, format!("not a PEM certificate: {e}")))?;
        if chain.is_empty() {
            return Err(invalid(&self.cert, "holds no PEM certificate"));
        }
        let key_pem = Zeroizing::new(read_file(&self.key)?);
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid(&self.key, format!("not a PEM private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&self.cert, e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                invalid(
                    &self.key,
                    format!(
                        "does not match the certificate {}: {e}",
                        self.cert.display()
                    ),
                )
            })?;
        Ok(Arc::new(config))
    }
}

/// An open, authenticated connection.
pub struct Connection {
    stream: StreamOwned<ClientConnection, TcpStream>,
    request_timeout: Duration,
}

/// The addresses of `server` (`HOST:PORT`), looked up by `lookup` on a
/// thread of its own and waited for only until `deadline`.
///
/// Why a thread: `getaddrinfo` has no timeout and blocks for as long as the
/// resolver does (a resolver that drops packets makes it wait 5 s per
/// server and attempt, longer with `options timeout:`). A lookup still
/// running at the deadline is left to finish on its own; its answer is
/// dropped. A numeric address needs no lookup and no thread.
fn resolve_with(
    server: &str,
    deadline: &Deadline,
    lookup: impl FnOnce(String) -> std::io::Result<Vec<SocketAddr>> + Send + 'static,
) -> Result<Vec<SocketAddr>, TransportError> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let unresolved = || TransportError::Resolve(server.to_owned());
    let (tx, rx) = std::sync::mpsc::channel();
    let name = server.to_owned();
    std::thread::Builder::new()
        .name("kmip-resolve".into())
        .spawn(move || {
            let _ = tx.send(lookup(name));
        })
        .map_err(|_| unresolved())?;
    match rx.recv_timeout(deadline.remaining()?) {
        Ok(Ok(addrs)) => Ok(addrs),
        Ok(Err(_)) => Err(unresolved()),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            Err(TransportError::DeadlinePassed(deadline.budget))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(unresolved()),
    }
}

/// [`resolve_with`] the system resolver.
fn resolve(server: &str, deadline: &Deadline) -> Result<Vec<SocketAddr>, TransportError> {
    resolve_with(server, deadline, |name| {
        name.to_socket_addrs().map(Iterator::collect)
    })
}

fn classify_tls(err: &rustls::Error) -> TlsFailure {
    use rustls::{AlertDescription, Error};
    match err {
        Error::InvalidCertificate(why) => TlsFailure::ServerNotTrusted(format!("{why:?}")),
        Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
            | AlertDescription::HandshakeFailure),
        ) => TlsFailure::ClientRejected(format!("alert {alert:?}")),
        other => TlsFailure::Other(other.to_string()),
    }
}

/// The transport error of an I/O error of a step that was allowed `timeout`
/// of what was left of `deadline`.
fn io_error(
    err: std::io::Error,
    timeout: Duration,
    deadline: &Deadline,
    handshaking: bool,
) -> TransportError {
    use std::io::ErrorKind;
    if let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return TransportError::Tls(classify_tls(tls));
    }
    match err.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => match deadline.remaining() {
            Err(passed) => passed,
            Ok(_) => TransportError::Timeout(timeout),
        },
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            if handshaking =>
        {
            TransportError::Tls(TlsFailure::ClientRejected(
                "the server closed the connection during the handshake".into(),
            ))
        }
        _ => TransportError::Io(err),
    }
}

impl Connection {
    /// Resolves, connects and completes the TLS handshake, each step
    /// within its limit and all of them before `deadline`.
    pub fn open(
        endpoint: &Endpoint,
        config: Arc<ClientConfig>,
        deadline: &Deadline,
    ) -> Result<Self, TransportError> {
        let (host, _) = endpoint
            .server
            .rsplit_once(':')
            .ok_or_else(|| TransportError::Resolve(endpoint.server.clone()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| TransportError::Resolve(endpoint.server.clone()))?;
        let addrs = resolve(&endpoint.server, deadline)?;
        let mut last_err = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, deadline.cap(endpoint.connect_timeout)?) {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(err) => last_err = Some(err),
            }
        }
        let mut tcp = match (tcp, last_err) {
            (Some(tcp), _) => tcp,
            (None, Some(err)) if err.kind() == std::io::ErrorKind::TimedOut => {
                return Err(TransportError::Connect(std::io::Error::new(
                    err.kind(),
                    format!(
                        "no TCP answer within {:?} (connect timeout)",
                        endpoint.connect_timeout
                    ),
                )))
            }
            (None, Some(err)) => return Err(TransportError::Connect(err)),
            (None, None) => return Err(TransportError::Resolve(endpoint.server.clone())),
        };
        let timeout = endpoint.request_timeout;
        tcp.set_nodelay(true).map_err(TransportError::Io)?;
        let mut tls = ClientConnection::new(config, name)
            .map_err(|e| TransportError::Tls(TlsFailure::Other(e.to_string())))?;
        while tls.is_handshaking() {
            let step = limit_socket(&tcp, timeout, deadline)?;
            tls.complete_io(&mut tcp)
                .map_err(|e| io_error(e, step, deadline, true))?;
        }
        Ok(Self {
            stream: StreamOwned::new(tls, tcp),
            request_timeout: timeout,
        })
    }

    /// Sends one request and reads exactly one response message, before
    /// `deadline`.
    pub fn round_trip(
        &mut self,
        request: &[u8],
        deadline: &Deadline,
    ) -> Result<Zeroizing<Vec<u8>>, TransportError> {
        let step = limit_socket(self.stream.get_ref(), self.request_timeout, deadline)?;
        self.stream
            .write_all(request)
            .and_then(|()| self.stream.flush())
            .map_err(|e| io_error(e, step, deadline, false))?;
        let mut header = [0u8; 8];
        self.read_exact_before(&mut header, deadline)?;
        let total = ttlv::message_len(&header)?;
        let mut response = Zeroizing::new(vec![0u8; total]);
        response[..8].copy_from_slice(&header);
        self.read_exact_before(&mut response[8..], deadline)?;
        Ok(response)
    }

    /// `read_exact`, with the socket's limit cut to what is left of
    /// `deadline` before every read: a server that drips a byte at a time
    /// cannot stretch a request past it.
    fn read_exact_before(
        &mut self,
        buf: &mut [u8],
        deadline: &Deadline,
    ) -> Result<(), TransportError> {
        let mut filled = 0;
        while filled < buf.len() {
            let step = limit_socket(self.stream.get_ref(), self.request_timeout, deadline)?;
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => {
                    let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
                    return Err(io_error(eof, step, deadline, false));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e, step, deadline, false)),
            }
        }
        Ok(())
    }
}

/// Sets the socket's read and write limits to `limit` cut to what is left
/// of `deadline`; the limit set.
fn limit_socket(
    tcp: &TcpStream,
    limit: Duration,
    deadline: &Deadline,
) -> Result<Duration, TransportError> {
    let step = deadline.cap(limit)?;
    tcp.set_read_timeout(Some(step))
        .and_then(|()| tcp.set_write_timeout(Some(step)))
        .map_err(TransportError::Io)?;
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup that never returns in time is abandoned at the deadline;
    /// numeric addresses need no lookup; a failed one names the server.
    #[test]
    fn resolution_stops_waiting_at_the_deadline() {
        let deadline = Deadline::after(Duration::from_millis(200));
        let started = Instant::now();
        let err = resolve_with("kms.example:5696", &deadline, |_| {
            std::thread::sleep(Duration::from_secs(30));
            Ok(Vec::new())
        })
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(matches!(err, TransportError::DeadlinePassed(_)), "{err}");
        assert!(err.to_string().contains("operation timeout"), "{err}");

        let never = Deadline::after(Duration::from_secs(30));
        let addrs = resolve_with("127.0.0.1:5696", &never, |_| unreachable!()).unwrap();
        assert_eq!(addrs, ["127.0.0.1:5696".parse().unwrap()]);
        let err = resolve_with("kms.example:5696", &never, |_| {
            Err(std::io::Error::other("NXDOMAIN"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "cannot resolve kms.example:5696");
    }

    #[test]
    fn deadlines_cap_steps_and_pass() {
        let deadline = Deadline::after(Duration::from_millis(50));
        assert!(deadline.cap(Duration::from_secs(10)).unwrap() <= Duration::from_millis(50));
        assert_eq!(
            deadline.cap(Duration::from_millis(1)).unwrap(),
            Duration::from_millis(1)
        );
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            matches!(deadline.remaining(), Err(TransportError::DeadlinePassed(d)) if d == Duration::from_millis(50))
        );
    }
}
