//! The KMIP key provider: KEKs held by an external key management server
//! that speaks KMIP 1.x over TLS with client certificates.
//!
//! Layers, bottom to top, each knowing only its own job:
//!
//! * [`ttlv`]: the TTLV byte encoding (pure, fuzzed).
//! * [`tags`]: the KMIP numbers we use.
//! * [`message`]: request and response envelopes, result status.
//! * [`transport`]: one TLS connection (rustls, aws-lc-rs), timeouts, framing.
//! * [`batcher`]: concurrent requests sent as the batch items of one
//!   message.
//! * [`client`]: the operations (Create, Activate, Get, Locate,
//!   GetAttributes, Encrypt, Decrypt, Revoke, Destroy), with retries.
//! * [`provider`]: KEK versions on the server as a
//!   [`KeyProvider`](crate::keys::KeyProvider); `batch` is it for a re-key
//!   of every VM home.
//! * [`config`]: the stored settings of one provider.
//! * [`known_versions`]: which KMIP object is each KEK version, as this
//!   host recorded it.

mod batch;
pub mod batcher;
pub mod client;
pub mod config;
pub mod known_versions;
pub mod message;
pub mod provider;
pub mod tags;
pub mod transport;
pub mod ttlv;

pub use config::{KmipConfig, WrapMode};
pub use provider::KmipProvider;
