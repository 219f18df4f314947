//! One TLS connection to a KMIP server: client-certificate authentication
//! (rustls with the ring provider), timeouts, and framing of one TTLV
//! message per request and per response.
//!
//! Knows sockets and certificates; nothing of KMIP operations.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    /// 1.3, ring provider).
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
        let provider = Arc::new(rustls::crypto::ring::default_provider());
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

fn io_error(err: std::io::Error, timeout: Duration, handshaking: bool) -> TransportError {
    use std::io::ErrorKind;
    if let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return TransportError::Tls(classify_tls(tls));
    }
    match err.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => TransportError::Timeout(timeout),
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
    /// Connects, completes the TLS handshake and sets the timeouts.
    pub fn open(endpoint: &Endpoint, config: Arc<ClientConfig>) -> Result<Self, TransportError> {
        let (host, _) = endpoint
            .server
            .rsplit_once(':')
            .ok_or_else(|| TransportError::Resolve(endpoint.server.clone()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| TransportError::Resolve(endpoint.server.clone()))?;
        let addrs = endpoint
            .server
            .to_socket_addrs()
            .map_err(|_| TransportError::Resolve(endpoint.server.clone()))?;
        let mut last_err = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, endpoint.connect_timeout) {
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
        tcp.set_read_timeout(Some(timeout))
            .map_err(TransportError::Io)?;
        tcp.set_write_timeout(Some(timeout))
            .map_err(TransportError::Io)?;
        tcp.set_nodelay(true).map_err(TransportError::Io)?;
        let mut tls = ClientConnection::new(config, name)
            .map_err(|e| TransportError::Tls(TlsFailure::Other(e.to_string())))?;
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp)
                .map_err(|e| io_error(e, timeout, true))?;
        }
        Ok(Self {
            stream: StreamOwned::new(tls, tcp),
            request_timeout: timeout,
        })
    }

    /// Sends one request and reads exactly one response message.
    pub fn round_trip(&mut self, request: &[u8]) -> Result<Zeroizing<Vec<u8>>, TransportError> {
        let timeout = self.request_timeout;
        self.stream
            .write_all(request)
            .and_then(|()| self.stream.flush())
            .map_err(|e| io_error(e, timeout, false))?;
        let mut header = [0u8; 8];
        self.stream
            .read_exact(&mut header)
            .map_err(|e| io_error(e, timeout, false))?;
        let total = ttlv::message_len(&header)?;
        let mut response = Zeroizing::new(vec![0u8; total]);
        response[..8].copy_from_slice(&header);
        self.stream
            .read_exact(&mut response[8..])
            .map_err(|e| io_error(e, timeout, false))?;
        Ok(response)
    }
}
