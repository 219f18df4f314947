//! The settings of one KMIP provider, as stored in the provider registry
//! (`providers.json`, see [`crate::keys::registry`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where DEKs are wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WrapMode {
    /// KMIP Encrypt/Decrypt (AES-GCM, protocol 1.4): the KEK never leaves
    /// the KMS.
    #[default]
    Server,
    /// KMIP Get, then AES-GCM on the host; the fetched KEK is zeroized
    /// after each use. For servers without Encrypt and Decrypt.
    Local,
}

impl WrapMode {
    /// `server` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            WrapMode::Server => "server",
            WrapMode::Local => "local",
        }
    }
}

/// Default TCP connect limit.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default limit per read or write of a request.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Default retries after a failed attempt (backoff 0.1 s, 0.2 s, 0.4 s).
pub const DEFAULT_RETRIES: u32 = 3;
/// Default limit of one whole provider operation (every request it makes,
/// with DNS, connects, retries and backoff).
pub const DEFAULT_OPERATION_TIMEOUT_MS: u64 = 30_000;

fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}

fn default_request_timeout_ms() -> u64 {
    DEFAULT_REQUEST_TIMEOUT_MS
}

fn default_retries() -> u32 {
    DEFAULT_RETRIES
}

fn default_operation_timeout_ms() -> u64 {
    DEFAULT_OPERATION_TIMEOUT_MS
}

/// One KMIP provider's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmipConfig {
    /// `HOST:PORT` of the KMS.
    pub server: String,
    /// CA certificate that signed the KMS's certificate (PEM).
    pub ca: PathBuf,
    /// Client certificate (PEM).
    pub cert: PathBuf,
    /// Client private key (PEM).
    pub key: PathBuf,
    /// KMIP Name prefix and Object Group of this provider's KEKs; recorded
    /// as the `kek_id` of bundles.
    pub key_series: String,
    /// Where DEKs are wrapped.
    #[serde(default)]
    pub wrap: WrapMode,
    /// TCP connect limit, milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Limit per read or write, milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Retries of a failed connection or repeatable request.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Limit of one whole provider operation (wrap, unwrap, listing,
    /// rotation...), milliseconds: every KMIP request it makes, with name
    /// resolution, connects, retries and backoff, ends by then, whatever
    /// the per-step limits above add up to.
    #[serde(default = "default_operation_timeout_ms")]
    pub operation_timeout_ms: u64,
}
