//! The KMIP request and response envelopes: one operation per message.
//!
//! Knows the message structure (header, one batch item, result status) and
//! nothing of sockets or of what the operations mean to vmcryptfs.

use zeroize::Zeroizing;

use super::tags::{tag, RESULT_SUCCESS};
use super::ttlv::{Item, TtlvError, Value};

/// The protocol version every request carries. 1.4 is the first with the
/// AES-GCM fields of Encrypt and Decrypt (additional data and tag); PyKMIP
/// rejects them at 1.2 with "Error parsing request message".
pub const PROTOCOL_VERSION: (i32, i32) = (1, 4);

/// Why a response did not carry a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// The server answered with Result Status other than Success.
    #[error("{}{}", reason.map(super::tags::reason_name).unwrap_or("failed"), message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Failed {
        /// Result Reason, if the server sent one.
        reason: Option<u32>,
        /// Result Message, if the server sent one.
        message: Option<String>,
    },
    /// The bytes are not TTLV.
    #[error("malformed response: {0}")]
    Ttlv(#[from] TtlvError),
    /// TTLV, but not the response to our request.
    #[error("malformed response: {0}")]
    Structure(&'static str),
}

/// Encodes a request for `operation` with the given payload fields. The
/// buffer is wiped when dropped: an Encrypt request carries a DEK.
pub fn encode_request(operation: u32, payload: Vec<Item>) -> Zeroizing<Vec<u8>> {
    let (major, minor) = PROTOCOL_VERSION;
    let message = Item::structure(
        tag::REQUEST_MESSAGE,
        vec![
            Item::structure(
                tag::REQUEST_HEADER,
                vec![
                    Item::structure(
                        tag::PROTOCOL_VERSION,
                        vec![
                            Item::integer(tag::PROTOCOL_VERSION_MAJOR, major),
                            Item::integer(tag::PROTOCOL_VERSION_MINOR, minor),
                        ],
                    ),
                    Item::integer(tag::BATCH_COUNT, 1),
                ],
            ),
            Item::structure(
                tag::BATCH_ITEM,
                vec![
                    Item::enumeration(tag::OPERATION, operation),
                    Item::structure(tag::REQUEST_PAYLOAD, payload),
                ],
            ),
        ],
    );
    let mut out = Zeroizing::new(Vec::new());
    message.encode_into(&mut out);
    out
}

/// Decodes the response to a request for `operation` and returns its
/// payload (an empty structure for operations that return none).
pub fn decode_response(bytes: &[u8], operation: u32) -> Result<Item, ResponseError> {
    let message = Item::decode(bytes)?;
    if message.tag != tag::RESPONSE_MESSAGE {
        return Err(ResponseError::Structure("not a Response Message"));
    }
    let mut items = message.children(tag::BATCH_ITEM);
    let item = items
        .next()
        .ok_or(ResponseError::Structure("no Batch Item"))?;
    if items.next().is_some() {
        return Err(ResponseError::Structure("more than one Batch Item"));
    }
    if let Some(op) = item.child(tag::OPERATION) {
        if op.as_enumeration() != Some(operation) {
            return Err(ResponseError::Structure(
                "the answer is for another operation",
            ));
        }
    }
    let status = item
        .child(tag::RESULT_STATUS)
        .and_then(Item::as_enumeration)
        .ok_or(ResponseError::Structure("no Result Status"))?;
    if status != RESULT_SUCCESS {
        return Err(ResponseError::Failed {
            reason: item
                .child(tag::RESULT_REASON)
                .and_then(Item::as_enumeration),
            message: item
                .child(tag::RESULT_MESSAGE)
                .and_then(Item::as_text)
                .map(str::to_owned),
        });
    }
    Ok(item
        .child(tag::RESPONSE_PAYLOAD)
        .cloned()
        .unwrap_or_else(|| Item::new(tag::RESPONSE_PAYLOAD, Value::Structure(Vec::new()))))
}

#[cfg(test)]
mod tests {
    use super::super::tags::{operation, reason};
    use super::*;

    fn response(batch: Vec<Item>) -> Vec<u8> {
        Item::structure(
            tag::RESPONSE_MESSAGE,
            vec![
                Item::structure(
                    tag::RESPONSE_HEADER,
                    vec![Item::integer(tag::BATCH_COUNT, 1)],
                ),
                Item::structure(tag::BATCH_ITEM, batch),
            ],
        )
        .encode()
    }

    #[test]
    fn request_carries_version_operation_and_payload() {
        let bytes = encode_request(
            operation::GET,
            vec![Item::text(tag::UNIQUE_IDENTIFIER, "42")],
        );
        let message = Item::decode(&bytes).unwrap();
        assert_eq!(message.tag, tag::REQUEST_MESSAGE);
        let version = message
            .child(tag::REQUEST_HEADER)
            .and_then(|h| h.child(tag::PROTOCOL_VERSION))
            .unwrap();
        assert_eq!(
            version.child(tag::PROTOCOL_VERSION_MINOR).unwrap().value,
            Value::Integer(4)
        );
        let batch = message.child(tag::BATCH_ITEM).unwrap();
        assert_eq!(
            batch.child(tag::OPERATION).unwrap().as_enumeration(),
            Some(operation::GET)
        );
        let uid = batch
            .child(tag::REQUEST_PAYLOAD)
            .and_then(|p| p.child(tag::UNIQUE_IDENTIFIER))
            .and_then(Item::as_text);
        assert_eq!(uid, Some("42"));
    }

    #[test]
    fn success_returns_the_payload() {
        let bytes = response(vec![
            Item::enumeration(tag::OPERATION, operation::GET),
            Item::enumeration(tag::RESULT_STATUS, RESULT_SUCCESS),
            Item::structure(
                tag::RESPONSE_PAYLOAD,
                vec![Item::text(tag::UNIQUE_IDENTIFIER, "7")],
            ),
        ]);
        let payload = decode_response(&bytes, operation::GET).unwrap();
        assert_eq!(
            payload
                .child(tag::UNIQUE_IDENTIFIER)
                .and_then(Item::as_text),
            Some("7")
        );
        let empty = response(vec![Item::enumeration(tag::RESULT_STATUS, RESULT_SUCCESS)]);
        assert_eq!(
            decode_response(&empty, operation::ACTIVATE).unwrap().value,
            Value::Structure(Vec::new())
        );
    }

    #[test]
    fn failure_carries_reason_and_message() {
        let bytes = response(vec![
            Item::enumeration(tag::OPERATION, operation::DESTROY),
            Item::enumeration(tag::RESULT_STATUS, 1),
            Item::enumeration(tag::RESULT_REASON, reason::PERMISSION_DENIED),
            Item::text(tag::RESULT_MESSAGE, "not the owner"),
        ]);
        let err = decode_response(&bytes, operation::DESTROY).unwrap_err();
        assert_eq!(
            err,
            ResponseError::Failed {
                reason: Some(reason::PERMISSION_DENIED),
                message: Some("not the owner".into())
            }
        );
        assert_eq!(err.to_string(), "Permission Denied: not the owner");
    }

    #[test]
    fn wrong_shapes_are_errors() {
        let other_op = response(vec![
            Item::enumeration(tag::OPERATION, operation::GET),
            Item::enumeration(tag::RESULT_STATUS, RESULT_SUCCESS),
        ]);
        assert!(matches!(
            decode_response(&other_op, operation::DESTROY),
            Err(ResponseError::Structure(_))
        ));
        let no_status = response(vec![Item::enumeration(tag::OPERATION, operation::GET)]);
        assert!(decode_response(&no_status, operation::GET).is_err());
        let request = encode_request(operation::GET, Vec::new());
        assert!(decode_response(&request, operation::GET).is_err());
        assert!(decode_response(b"not ttlv", operation::GET).is_err());
    }
}
