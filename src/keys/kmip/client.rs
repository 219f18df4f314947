//! The KMIP operations vmcryptfs needs, over [`transport`](super::transport),
//! with retries.
//!
//! Read-only and repeatable operations (Locate, Get, GetAttributes,
//! Encrypt, Decrypt, DiscoverVersions) share one cached connection, where
//! those of concurrent threads go together as the batch items of one
//! message ([`batcher`](super::batcher)), and are retried with backoff when
//! the connection fails, because repeating them changes nothing. Operations that change the server (Create, Activate,
//! Revoke, Destroy) each open a fresh connection and are retried only while
//! connecting: once the request may have reached the server, repeating it
//! could create a second key or fail confusingly, so the error is reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use zeroize::Zeroizing;

use super::batcher::{Answer, Batcher};
use super::message::{batch_item, decode_batch, decode_response, encode_batch, ResponseError};
use super::tags::{self, operation, tag};
use super::transport::{
    ClientIdentity, Connection, Deadline, Endpoint, IdentityError, TransportError,
};
use super::ttlv::Item;
use crate::crypto::secret::KEY_LEN;

/// First retry delay; doubled for each further retry.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Why a KMIP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KmipError {
    /// The certificate files are unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The server could not be reached or the connection failed.
    #[error("{operation} via {server}: {source} (after {attempts} attempt(s))")]
    Transport {
        /// The KMIP operation.
        operation: &'static str,
        /// HOST:PORT.
        server: String,
        /// How many times we tried.
        attempts: u32,
        /// The last failure.
        source: TransportError,
    },
    /// The server answered with a failure.
    #[error("{operation} refused by {server}: {source}")]
    Refused {
        /// The KMIP operation.
        operation: &'static str,
        /// HOST:PORT.
        server: String,
        /// The result reason and message.
        source: ResponseError,
    },
    /// The answer is not what the operation returns.
    #[error("{operation} via {server}: the answer lacks {field}")]
    Missing {
        /// The KMIP operation.
        operation: &'static str,
        /// HOST:PORT.
        server: String,
        /// The field.
        field: &'static str,
    },
}

impl KmipError {
    /// The KMIP Result Reason, when the server refused.
    pub fn reason(&self) -> Option<u32> {
        match self {
            KmipError::Refused {
                source: ResponseError::Failed { reason, .. },
                ..
            } => *reason,
            _ => None,
        }
    }

    /// Whether the server could not be reached (as opposed to answering).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            KmipError::Transport {
                source: TransportError::Connect(_)
                    | TransportError::Timeout(_)
                    | TransportError::DeadlinePassed(_)
                    | TransportError::Io(_)
                    | TransportError::Resolve(_),
                ..
            }
        )
    }
}

/// Attributes of a managed object that vmcryptfs reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectAttributes {
    /// The Name attribute.
    pub name: Option<String>,
    /// The State enumeration.
    pub state: Option<u32>,
    /// Initial Date, seconds since the epoch.
    pub initial_date: Option<i64>,
}

/// A KMIP client for one server and client identity.
pub struct KmipClient {
    /// Where and how long to wait. Immutable.
    endpoint: Endpoint,
    /// TLS configuration built from the identity files. Immutable.
    tls: Arc<ClientConfig>,
    /// Retries after the first attempt. Immutable.
    retries: u32,
    /// The connection shared by repeatable operations. Held for the whole
    /// request and response, so one request is in flight at a time.
    cached: Mutex<Option<Connection>>,
    /// Repeatable requests waiting to share a message; its own lock, never
    /// held while `cached` is.
    batcher: Batcher,
    /// Request messages sent, for tests of the batching. Only counted up.
    messages: AtomicU64,
}

impl KmipClient {
    /// A client; reads the certificate files now, so bad files fail here.
    pub fn new(
        endpoint: Endpoint,
        identity: &ClientIdentity,
        retries: u32,
    ) -> Result<Self, KmipError> {
        Ok(Self {
            tls: identity.client_config()?,
            endpoint,
            retries,
            cached: Mutex::new(None),
            batcher: Batcher::default(),
            messages: AtomicU64::new(0),
        })
    }

    /// How many request messages this client has sent (a batch of items
    /// is one).
    pub fn messages_sent(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// HOST:PORT of the server.
    pub fn server(&self) -> &str {
        &self.endpoint.server
    }

    fn transport_error(&self, op: u32, attempts: u32, source: TransportError) -> KmipError {
        KmipError::Transport {
            operation: tags::operation_name(op),
            server: self.endpoint.server.clone(),
            attempts,
            source,
        }
    }

    fn decode(&self, op: u32, bytes: &[u8]) -> Result<Item, KmipError> {
        decode_response(bytes, op).map_err(|source| self.refused(op, source))
    }

    fn refused(&self, op: u32, source: ResponseError) -> KmipError {
        KmipError::Refused {
            operation: tags::operation_name(op),
            server: self.endpoint.server.clone(),
            source,
        }
    }

    fn retryable(err: &TransportError) -> bool {
        matches!(
            err,
            TransportError::Connect(_) | TransportError::Timeout(_) | TransportError::Io(_)
        )
    }

    /// Runs one operation and returns its response payload; gives up at
    /// `deadline`, retries and their backoff included. A repeatable one
    /// goes first in a batch with other threads' ([`Batcher`]); if that
    /// message fails in transport, it is sent alone, with the retries.
    fn call(
        &self,
        deadline: &Deadline,
        op: u32,
        payload: Vec<Item>,
        repeatable: bool,
    ) -> Result<Item, KmipError> {
        let item = batch_item(op, payload);
        if repeatable {
            let send = |items: Vec<Item>, ops: &[u32]| self.send_batch(items, ops, deadline);
            if let Some(answer) = self.batcher.run(op, item.clone(), deadline, send) {
                return answer.map_err(|source| self.refused(op, source));
            }
        }
        let request = encode_batch(vec![item]);
        let mut attempt = 0;
        loop {
            let result = if repeatable {
                self.round_trip_cached(&request, deadline)
            } else {
                self.round_trip_fresh(&request, deadline)
            };
            match result {
                Ok(bytes) => return self.decode(op, &bytes),
                Err((err, may_retry)) => {
                    let backoff = FIRST_BACKOFF * 2u32.saturating_pow(attempt);
                    let time_left = deadline.remaining().is_ok_and(|left| left > backoff);
                    if !(may_retry && Self::retryable(&err) && time_left) || attempt >= self.retries
                    {
                        return Err(self.transport_error(op, attempt + 1, err));
                    }
                    log::warn!(
                        "KMIP {} via {}: {err}; retrying",
                        tags::operation_name(op),
                        self.endpoint.server
                    );
                    std::thread::sleep(backoff);
                    attempt += 1;
                }
            }
        }
    }

    /// One message of `items` (for `ops`) on the cached connection: one
    /// answer per item, or `None` for each if the message failed in
    /// transport (or, with several items, came back malformed), so that
    /// each is sent alone and reports its own failure.
    fn send_batch(&self, items: Vec<Item>, ops: &[u32], deadline: &Deadline) -> Vec<Answer> {
        let request = encode_batch(items);
        let alone = || vec![None; ops.len()];
        let bytes = {
            let mut cached = self.cached.lock().unwrap_or_else(|poisoned| {
                // A panic mid-exchange may have left the connection out
                // of step with the server: start a new one.
                let mut cached = poisoned.into_inner();
                *cached = None;
                cached
            });
            if cached.is_none() {
                match self.connect(deadline) {
                    Ok(connection) => *cached = Some(connection),
                    Err(_) => return alone(),
                }
            }
            let connection = cached.as_mut().expect("just connected");
            match self.exchange(connection, &request, deadline) {
                Ok(bytes) => bytes,
                Err(_) => {
                    *cached = None;
                    return alone();
                }
            }
        };
        match decode_batch(&bytes, ops) {
            Ok(answers) => answers.into_iter().map(Some).collect(),
            Err(err) if ops.len() == 1 => vec![Some(Err(err))],
            Err(err) => {
                log::warn!(
                    "KMIP server {} answered a batch of {} items wrongly ({err}); sending them one by one",
                    self.endpoint.server,
                    ops.len()
                );
                alone()
            }
        }
    }

    /// A round trip on the cached connection; any failure drops it. While
    /// another thread uses it, on a connection of its own instead: waiting
    /// for the lock could outlast this operation's deadline.
    #[allow(clippy::type_complexity)]
    fn round_trip_cached(
        &self,
        request: &[u8],
        deadline: &Deadline,
    ) -> Result<Zeroizing<Vec<u8>>, (TransportError, bool)> {
        let mut cached = match self.cached.try_lock() {
            Ok(cached) => cached,
            Err(std::sync::TryLockError::WouldBlock) => {
                let mut connection = self.connect(deadline)?;
                return self
                    .exchange(&mut connection, request, deadline)
                    .map_err(|e| (e, true));
            }
            Err(std::sync::TryLockError::Poisoned(_)) => panic!("KMIP connection lock poisoned"),
        };
        if cached.is_none() {
            *cached = Some(self.connect(deadline)?);
        }
        let connection = cached.as_mut().expect("just connected");
        self.exchange(connection, request, deadline).map_err(|err| {
            *cached = None;
            (err, true)
        })
    }

    /// A round trip on a new connection; only connecting may be retried.
    #[allow(clippy::type_complexity)]
    fn round_trip_fresh(
        &self,
        request: &[u8],
        deadline: &Deadline,
    ) -> Result<Zeroizing<Vec<u8>>, (TransportError, bool)> {
        let mut connection = self.connect(deadline)?;
        self.exchange(&mut connection, request, deadline)
            .map_err(|e| (e, false))
    }

    /// One request message and its response on `connection`, counted.
    fn exchange(
        &self,
        connection: &mut Connection,
        request: &[u8],
        deadline: &Deadline,
    ) -> Result<Zeroizing<Vec<u8>>, TransportError> {
        self.messages.fetch_add(1, Ordering::Relaxed);
        connection.round_trip(request, deadline)
    }

    /// A new connection; a failure to connect may be retried.
    fn connect(&self, deadline: &Deadline) -> Result<Connection, (TransportError, bool)> {
        Connection::open(&self.endpoint, self.tls.clone(), deadline).map_err(|e| (e, true))
    }

    fn missing(&self, op: u32, field: &'static str) -> KmipError {
        KmipError::Missing {
            operation: tags::operation_name(op),
            server: self.endpoint.server.clone(),
            field,
        }
    }

    fn unique_identifier(&self, op: u32, payload: &Item) -> Result<String, KmipError> {
        payload
            .child(tag::UNIQUE_IDENTIFIER)
            .and_then(Item::as_text)
            .map(str::to_owned)
            .ok_or_else(|| self.missing(op, "Unique Identifier"))
    }

    /// Checks that the server answers: DiscoverVersions, which every KMIP
    /// server implements and which touches no object.
    pub fn ping(&self, deadline: &Deadline) -> Result<(), KmipError> {
        self.call(deadline, operation::DISCOVER_VERSIONS, Vec::new(), true)
            .map(drop)
    }

    /// Creates a 256-bit AES key for encrypt and decrypt, with a Name and an
    /// Object Group; it starts Pre-Active. Returns its unique identifier.
    pub fn create_aes256(
        &self,
        deadline: &Deadline,
        name: &str,
        group: &str,
    ) -> Result<String, KmipError> {
        let attribute = |attr_name: &str, value: Item| {
            Item::structure(
                tag::ATTRIBUTE,
                vec![Item::text(tag::ATTRIBUTE_NAME, attr_name), value],
            )
        };
        let payload = vec![
            Item::enumeration(tag::OBJECT_TYPE, tags::OBJECT_TYPE_SYMMETRIC_KEY),
            Item::structure(
                tag::TEMPLATE_ATTRIBUTE,
                vec![
                    attribute(
                        "Cryptographic Algorithm",
                        Item::enumeration(tag::ATTRIBUTE_VALUE, tags::ALGORITHM_AES),
                    ),
                    attribute(
                        "Cryptographic Length",
                        Item::integer(tag::ATTRIBUTE_VALUE, 256),
                    ),
                    attribute(
                        "Cryptographic Usage Mask",
                        Item::integer(tag::ATTRIBUTE_VALUE, tags::USAGE_ENCRYPT_DECRYPT),
                    ),
                    attribute("Name", name_value(name)),
                    attribute("Object Group", Item::text(tag::ATTRIBUTE_VALUE, group)),
                ],
            ),
        ];
        let response = self.call(deadline, operation::CREATE, payload, false)?;
        self.unique_identifier(operation::CREATE, &response)
    }

    /// Pre-Active to Active.
    pub fn activate(&self, deadline: &Deadline, uid: &str) -> Result<(), KmipError> {
        self.call(deadline, operation::ACTIVATE, uid_payload(uid), false)
            .map(drop)
    }

    /// Active to Deactivated, reason Superseded.
    pub fn revoke(&self, deadline: &Deadline, uid: &str) -> Result<(), KmipError> {
        let mut payload = uid_payload(uid);
        payload.push(Item::structure(
            tag::REVOCATION_REASON,
            vec![Item::enumeration(
                tag::REVOCATION_REASON_CODE,
                tags::REVOCATION_SUPERSEDED,
            )],
        ));
        self.call(deadline, operation::REVOKE, payload, false)
            .map(drop)
    }

    /// Destroys the key material (the server refuses Active keys).
    pub fn destroy(&self, deadline: &Deadline, uid: &str) -> Result<(), KmipError> {
        self.call(deadline, operation::DESTROY, uid_payload(uid), false)
            .map(drop)
    }

    /// Unique identifiers of the objects with this Name.
    pub fn locate_by_name(
        &self,
        deadline: &Deadline,
        name: &str,
    ) -> Result<Vec<String>, KmipError> {
        self.locate(
            deadline,
            Item::structure(
                tag::ATTRIBUTE,
                vec![Item::text(tag::ATTRIBUTE_NAME, "Name"), name_value(name)],
            ),
        )
    }

    /// Unique identifiers of the objects in this Object Group.
    pub fn locate_by_group(
        &self,
        deadline: &Deadline,
        group: &str,
    ) -> Result<Vec<String>, KmipError> {
        self.locate(
            deadline,
            Item::structure(
                tag::ATTRIBUTE,
                vec![
                    Item::text(tag::ATTRIBUTE_NAME, "Object Group"),
                    Item::text(tag::ATTRIBUTE_VALUE, group),
                ],
            ),
        )
    }

    fn locate(&self, deadline: &Deadline, attribute: Item) -> Result<Vec<String>, KmipError> {
        let response = self.call(deadline, operation::LOCATE, vec![attribute], true)?;
        Ok(response
            .children(tag::UNIQUE_IDENTIFIER)
            .filter_map(Item::as_text)
            .map(str::to_owned)
            .collect())
    }

    /// Name, State and Initial Date of an object.
    pub fn get_attributes(
        &self,
        deadline: &Deadline,
        uid: &str,
    ) -> Result<ObjectAttributes, KmipError> {
        let mut payload = uid_payload(uid);
        for name in ["Name", "State", "Initial Date"] {
            payload.push(Item::text(tag::ATTRIBUTE_NAME, name));
        }
        let response = self.call(deadline, operation::GET_ATTRIBUTES, payload, true)?;
        let mut attributes = ObjectAttributes::default();
        for attribute in response.children(tag::ATTRIBUTE) {
            let name = attribute.child(tag::ATTRIBUTE_NAME).and_then(Item::as_text);
            let Some(value) = attribute.child(tag::ATTRIBUTE_VALUE) else {
                continue;
            };
            match name {
                Some("Name") => {
                    attributes.name = value
                        .child(tag::NAME_VALUE)
                        .and_then(Item::as_text)
                        .map(str::to_owned)
                }
                Some("State") => attributes.state = value.as_enumeration(),
                Some("Initial Date") => attributes.initial_date = value.as_date_time(),
                _ => {}
            }
        }
        Ok(attributes)
    }

    /// The raw key material of a 256-bit symmetric key.
    pub fn get_key(
        &self,
        deadline: &Deadline,
        uid: &str,
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, KmipError> {
        let op = operation::GET;
        let response = self.call(deadline, op, uid_payload(uid), true)?;
        let material = response
            .child(tag::SYMMETRIC_KEY)
            .and_then(|k| k.child(tag::KEY_BLOCK))
            .and_then(|b| b.child(tag::KEY_VALUE))
            .and_then(|v| v.child(tag::KEY_MATERIAL))
            .and_then(Item::as_bytes)
            .ok_or_else(|| self.missing(op, "the raw key material of a symmetric key"))?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        if material.len() != KEY_LEN {
            return Err(self.missing(op, "a 256-bit key"));
        }
        key.copy_from_slice(material);
        Ok(key)
    }

    /// AES-GCM encryption on the server with our nonce and additional data;
    /// returns ciphertext and 16-byte tag.
    pub fn encrypt_gcm(
        &self,
        deadline: &Deadline,
        uid: &str,
        plaintext: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), KmipError> {
        let op = operation::ENCRYPT;
        let mut payload = uid_payload(uid);
        payload.extend([
            gcm_parameters(),
            Item::bytes(tag::DATA, plaintext),
            Item::bytes(tag::IV_COUNTER_NONCE, nonce),
            Item::bytes(tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad),
        ]);
        let response = self.call(deadline, op, payload, true)?;
        let data = response
            .child(tag::DATA)
            .and_then(Item::as_bytes)
            .ok_or_else(|| self.missing(op, "Data"))?;
        let tag_bytes = response
            .child(tag::AUTHENTICATED_ENCRYPTION_TAG)
            .and_then(Item::as_bytes)
            .ok_or_else(|| self.missing(op, "Authenticated Encryption Tag"))?;
        Ok((data.to_vec(), tag_bytes.to_vec()))
    }

    /// AES-GCM decryption on the server; the tag and additional data are
    /// checked there.
    pub fn decrypt_gcm(
        &self,
        deadline: &Deadline,
        uid: &str,
        ciphertext: &[u8],
        nonce: &[u8],
        aad: &[u8],
        gcm_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KmipError> {
        let op = operation::DECRYPT;
        let mut payload = uid_payload(uid);
        payload.extend([
            gcm_parameters(),
            Item::bytes(tag::DATA, ciphertext),
            Item::bytes(tag::IV_COUNTER_NONCE, nonce),
            Item::bytes(tag::AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, aad),
            Item::bytes(tag::AUTHENTICATED_ENCRYPTION_TAG, gcm_tag),
        ]);
        let response = self.call(deadline, op, payload, true)?;
        response
            .child(tag::DATA)
            .and_then(Item::as_bytes)
            .map(|data| Zeroizing::new(data.to_vec()))
            .ok_or_else(|| self.missing(op, "Data"))
    }
}

fn uid_payload(uid: &str) -> Vec<Item> {
    vec![Item::text(tag::UNIQUE_IDENTIFIER, uid)]
}

fn name_value(name: &str) -> Item {
    Item::structure(
        tag::ATTRIBUTE_VALUE,
        vec![
            Item::text(tag::NAME_VALUE, name),
            Item::enumeration(tag::NAME_TYPE, tags::NAME_TYPE_TEXT),
        ],
    )
}

fn gcm_parameters() -> Item {
    Item::structure(
        tag::CRYPTOGRAPHIC_PARAMETERS,
        vec![
            Item::enumeration(tag::BLOCK_CIPHER_MODE, tags::MODE_GCM),
            Item::enumeration(tag::CRYPTOGRAPHIC_ALGORITHM, tags::ALGORITHM_AES),
            Item::integer(tag::TAG_LENGTH, 16),
        ],
    )
}
