//! The KMIP request and response envelopes: one operation per message, or
//! several as the batch items of one message.
//!
//! Knows the message structure (header, batch items, result status) and
//! nothing of sockets or of what the operations mean to vmcryptfs.

use zeroize::Zeroizing;

use super::tags::{tag, BATCH_CONTINUE, RESULT_SUCCESS};
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

/// One batch item of a request: `operation` with its payload fields.
pub fn batch_item(operation: u32, payload: Vec<Item>) -> Item {
    Item::structure(
        tag::BATCH_ITEM,
        vec![
            Item::enumeration(tag::OPERATION, operation),
            Item::structure(tag::REQUEST_PAYLOAD, payload),
        ],
    )
}

/// Encodes a request for `operation` with the given payload fields. The
/// buffer is wiped when dropped: an Encrypt request carries a DEK.
pub fn encode_request(operation: u32, payload: Vec<Item>) -> Zeroizing<Vec<u8>> {
    encode_batch(vec![batch_item(operation, payload)])
}

/// Encodes one request message carrying `items` (from [`batch_item`]) as
/// its batch items, which KMIP 1.4 allows (section 7.1): the server
/// answers each in one response message. With more than one, each gets
/// its position as Unique Batch Item ID, which the spec then requires and
/// the answers carry back. Wiped when dropped, as [`encode_request`].
pub fn encode_batch(items: Vec<Item>) -> Zeroizing<Vec<u8>> {
    let (major, minor) = PROTOCOL_VERSION;
    let count = items.len();
    // The ID goes after the Operation, as the spec orders the fields.
    let numbered = items.into_iter().enumerate().map(|(i, mut item)| {
        if count > 1 {
            if let Value::Structure(fields) = &mut item.value {
                fields.insert(1, Item::bytes(tag::UNIQUE_BATCH_ITEM_ID, &batch_id(i)));
            }
        }
        item
    });
    let mut header = vec![Item::structure(
        tag::PROTOCOL_VERSION,
        vec![
            Item::integer(tag::PROTOCOL_VERSION_MAJOR, major),
            Item::integer(tag::PROTOCOL_VERSION_MINOR, minor),
        ],
    )];
    if count > 1 {
        // The default (Stop) leaves the items after a failed one (a
        // tampered bundle's Decrypt) unanswered.
        header.push(Item::enumeration(
            tag::BATCH_ERROR_CONTINUATION_OPTION,
            BATCH_CONTINUE,
        ));
    }
    header.push(Item::integer(
        tag::BATCH_COUNT,
        i32::try_from(count).expect("a batch of fewer than 2^31 items"),
    ));
    let mut fields = vec![Item::structure(tag::REQUEST_HEADER, header)];
    fields.extend(numbered);
    let mut out = Zeroizing::new(Vec::new());
    Item::structure(tag::REQUEST_MESSAGE, fields).encode_into(&mut out);
    out
}

/// The Unique Batch Item ID of the item at `position`.
fn batch_id(position: usize) -> [u8; 4] {
    u32::try_from(position)
        .expect("a batch of fewer than 2^32 items")
        .to_be_bytes()
}

/// Decodes the response to a request for `operation` and returns its
/// payload (an empty structure for operations that return none).
pub fn decode_response(bytes: &[u8], operation: u32) -> Result<Item, ResponseError> {
    decode_batch(bytes, &[operation])?
        .pop()
        .expect("one answer for one item")
}

/// Decodes the response to a request of [`encode_batch`] whose items were
/// for `operations`, in order: the whole message must answer every item
/// exactly once (else `Err`), and each item's answer is its payload or its
/// own failure. With several items, answers are matched by their Unique
/// Batch Item ID, so a server may answer in any order.
pub fn decode_batch(
    bytes: &[u8],
    operations: &[u32],
) -> Result<Vec<Result<Item, ResponseError>>, ResponseError> {
    let message = Item::decode(bytes)?;
    if message.tag != tag::RESPONSE_MESSAGE {
        return Err(ResponseError::Structure("not a Response Message"));
    }
    let answers: Vec<&Item> = message.children(tag::BATCH_ITEM).collect();
    match answers.len().cmp(&operations.len()) {
        std::cmp::Ordering::Less if answers.is_empty() => {
            return Err(ResponseError::Structure("no Batch Item"))
        }
        std::cmp::Ordering::Less => {
            return Err(ResponseError::Structure("fewer Batch Items than asked"))
        }
        std::cmp::Ordering::Greater if operations.len() == 1 => {
            return Err(ResponseError::Structure("more than one Batch Item"))
        }
        std::cmp::Ordering::Greater => {
            return Err(ResponseError::Structure("more Batch Items than asked"))
        }
        std::cmp::Ordering::Equal => {}
    }
    let mut ordered: Vec<Option<&Item>> = vec![None; operations.len()];
    for (position, answer) in answers.into_iter().enumerate() {
        let position = match (operations.len(), answer.child(tag::UNIQUE_BATCH_ITEM_ID)) {
            (1, _) => 0,
            (_, Some(id)) => id
                .as_bytes()
                .and_then(|id| <[u8; 4]>::try_from(id).ok())
                .and_then(|id| usize::try_from(u32::from_be_bytes(id)).ok())
                .filter(|&i| i < operations.len())
                .ok_or(ResponseError::Structure("an unknown Unique Batch Item ID"))?,
            (_, None) => position,
        };
        if ordered[position].replace(answer).is_some() {
            return Err(ResponseError::Structure("an item answered twice"));
        }
    }
    Ok(ordered
        .into_iter()
        .zip(operations)
        .map(|(answer, &operation)| answer_of(answer.expect("each answered once"), operation))
        .collect())
}

/// One batch item's answer: its payload, or why it failed.
fn answer_of(item: &Item, operation: u32) -> Result<Item, ResponseError> {
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

    /// An answer to a batch: `(id, operation, status)` per item.
    fn batch_response(answers: &[(Option<u32>, u32, u32)]) -> Vec<u8> {
        let mut fields = vec![Item::structure(
            tag::RESPONSE_HEADER,
            vec![Item::integer(tag::BATCH_COUNT, answers.len() as i32)],
        )];
        for &(id, op, status) in answers {
            let mut item = vec![Item::enumeration(tag::OPERATION, op)];
            if let Some(id) = id {
                item.push(Item::bytes(tag::UNIQUE_BATCH_ITEM_ID, &id.to_be_bytes()));
            }
            item.push(Item::enumeration(tag::RESULT_STATUS, status));
            item.push(Item::structure(
                tag::RESPONSE_PAYLOAD,
                vec![Item::text(tag::UNIQUE_IDENTIFIER, &format!("{op}"))],
            ));
            fields.push(Item::structure(tag::BATCH_ITEM, item));
        }
        Item::structure(tag::RESPONSE_MESSAGE, fields).encode()
    }

    #[test]
    fn a_batch_numbers_its_items_and_asks_to_continue_past_failures() {
        let bytes = encode_batch(vec![
            batch_item(operation::ENCRYPT, Vec::new()),
            batch_item(operation::DECRYPT, Vec::new()),
        ]);
        let message = Item::decode(&bytes).unwrap();
        let header = message.child(tag::REQUEST_HEADER).unwrap();
        assert_eq!(
            header.child(tag::BATCH_COUNT).unwrap().value,
            Value::Integer(2)
        );
        assert_eq!(
            header
                .child(tag::BATCH_ERROR_CONTINUATION_OPTION)
                .and_then(Item::as_enumeration),
            Some(BATCH_CONTINUE)
        );
        for (i, item) in message.children(tag::BATCH_ITEM).enumerate() {
            let Value::Structure(fields) = &item.value else {
                panic!("a batch item is a structure")
            };
            // Operation, then the ID, as the spec orders them.
            assert_eq!(fields[0].tag, tag::OPERATION);
            assert_eq!(fields[1].as_bytes(), Some(&(i as u32).to_be_bytes()[..]));
        }
        // One item: no ID, no option, as before batching.
        let single = Item::decode(&encode_request(operation::GET, Vec::new())).unwrap();
        assert!(single
            .child(tag::REQUEST_HEADER)
            .unwrap()
            .child(tag::BATCH_ERROR_CONTINUATION_OPTION)
            .is_none());
        assert!(single
            .child(tag::BATCH_ITEM)
            .unwrap()
            .child(tag::UNIQUE_BATCH_ITEM_ID)
            .is_none());
    }

    #[test]
    fn batch_answers_are_matched_by_id_and_each_fails_alone() {
        let ops = [operation::ENCRYPT, operation::DECRYPT, operation::GET];
        // Out of order, the middle one failed.
        let bytes = batch_response(&[
            (Some(2), operation::GET, RESULT_SUCCESS),
            (Some(0), operation::ENCRYPT, RESULT_SUCCESS),
            (Some(1), operation::DECRYPT, 1),
        ]);
        let answers = decode_batch(&bytes, &ops).unwrap();
        let uid = |answer: &Result<Item, ResponseError>| {
            answer
                .as_ref()
                .unwrap()
                .child(tag::UNIQUE_IDENTIFIER)
                .and_then(Item::as_text)
                .map(str::to_owned)
        };
        assert_eq!(uid(&answers[0]), Some(operation::ENCRYPT.to_string()));
        assert!(matches!(answers[1], Err(ResponseError::Failed { .. })));
        assert_eq!(uid(&answers[2]), Some(operation::GET.to_string()));

        // Whole-message faults: an item unanswered (a server that stopped
        // at a failure), answered twice, or with an unknown ID.
        for wrong in [
            batch_response(&[
                (Some(0), operation::ENCRYPT, RESULT_SUCCESS),
                (Some(1), operation::DECRYPT, 1),
            ]),
            batch_response(&[
                (Some(0), operation::ENCRYPT, 0),
                (Some(0), operation::ENCRYPT, 0),
                (Some(2), operation::GET, 0),
            ]),
            batch_response(&[
                (Some(0), operation::ENCRYPT, 0),
                (Some(1), operation::DECRYPT, 0),
                (Some(7), operation::GET, 0),
            ]),
        ] {
            assert!(matches!(
                decode_batch(&wrong, &ops),
                Err(ResponseError::Structure(_))
            ));
        }
        // An answer for another operation than asked fails that item.
        let swapped = batch_response(&[
            (Some(0), operation::DECRYPT, 0),
            (Some(1), operation::DECRYPT, 0),
            (Some(2), operation::GET, 0),
        ]);
        let answers = decode_batch(&swapped, &ops).unwrap();
        assert!(matches!(answers[0], Err(ResponseError::Structure(_))));
        assert!(answers[1].is_ok() && answers[2].is_ok());
    }
}
