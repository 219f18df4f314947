//! The KMIP 1.x numbers vmcryptfs uses: tags, operations and enumerations
//! (KMIP Specification v1.4, section 9.1.3). Only what the client sends or
//! reads is listed.

/// TTLV tags (section 9.1.3.1). Names are the spec's, so they need no docs.
#[allow(missing_docs)]
pub mod tag {
    pub const ATTRIBUTE: u32 = 0x420008;
    pub const ATTRIBUTE_NAME: u32 = 0x42000A;
    pub const ATTRIBUTE_VALUE: u32 = 0x42000B;
    pub const BATCH_COUNT: u32 = 0x42000D;
    pub const BATCH_ERROR_CONTINUATION_OPTION: u32 = 0x42000E;
    pub const BATCH_ITEM: u32 = 0x42000F;
    pub const BLOCK_CIPHER_MODE: u32 = 0x420011;
    pub const CRYPTOGRAPHIC_ALGORITHM: u32 = 0x420028;
    pub const CRYPTOGRAPHIC_LENGTH: u32 = 0x42002A;
    pub const CRYPTOGRAPHIC_PARAMETERS: u32 = 0x42002B;
    pub const CRYPTOGRAPHIC_USAGE_MASK: u32 = 0x42002C;
    pub const IV_COUNTER_NONCE: u32 = 0x42003D;
    pub const KEY_BLOCK: u32 = 0x420040;
    pub const KEY_FORMAT_TYPE: u32 = 0x420042;
    pub const KEY_MATERIAL: u32 = 0x420043;
    pub const KEY_VALUE: u32 = 0x420045;
    pub const NAME: u32 = 0x420053;
    pub const NAME_TYPE: u32 = 0x420054;
    pub const NAME_VALUE: u32 = 0x420055;
    pub const OBJECT_GROUP: u32 = 0x420056;
    pub const OBJECT_TYPE: u32 = 0x420057;
    pub const OPERATION: u32 = 0x42005C;
    pub const PROTOCOL_VERSION: u32 = 0x420069;
    pub const PROTOCOL_VERSION_MAJOR: u32 = 0x42006A;
    pub const PROTOCOL_VERSION_MINOR: u32 = 0x42006B;
    pub const REQUEST_HEADER: u32 = 0x420077;
    pub const REQUEST_MESSAGE: u32 = 0x420078;
    pub const REQUEST_PAYLOAD: u32 = 0x420079;
    pub const RESPONSE_HEADER: u32 = 0x42007A;
    pub const RESPONSE_MESSAGE: u32 = 0x42007B;
    pub const RESPONSE_PAYLOAD: u32 = 0x42007C;
    pub const RESULT_MESSAGE: u32 = 0x42007D;
    pub const RESULT_REASON: u32 = 0x42007E;
    pub const RESULT_STATUS: u32 = 0x42007F;
    pub const REVOCATION_REASON: u32 = 0x420081;
    pub const REVOCATION_REASON_CODE: u32 = 0x420082;
    pub const STATE: u32 = 0x42008D;
    pub const SYMMETRIC_KEY: u32 = 0x42008F;
    pub const TEMPLATE_ATTRIBUTE: u32 = 0x420091;
    pub const UNIQUE_BATCH_ITEM_ID: u32 = 0x420093;
    pub const UNIQUE_IDENTIFIER: u32 = 0x420094;
    pub const TAG_LENGTH: u32 = 0x4200CE;
    pub const DATA: u32 = 0x4200C2;
    pub const AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA: u32 = 0x4200FE;
    pub const AUTHENTICATED_ENCRYPTION_TAG: u32 = 0x4200FF;
}

/// Operation enumeration (section 9.1.3.2.27).
#[allow(missing_docs)]
pub mod operation {
    pub const CREATE: u32 = 0x01;
    pub const LOCATE: u32 = 0x08;
    pub const GET: u32 = 0x0A;
    pub const GET_ATTRIBUTES: u32 = 0x0B;
    pub const ACTIVATE: u32 = 0x12;
    pub const REVOKE: u32 = 0x13;
    pub const DESTROY: u32 = 0x14;
    pub const DISCOVER_VERSIONS: u32 = 0x1E;
    pub const ENCRYPT: u32 = 0x1F;
    pub const DECRYPT: u32 = 0x20;
}

/// Object Type: Symmetric Key.
pub const OBJECT_TYPE_SYMMETRIC_KEY: u32 = 0x02;
/// Cryptographic Algorithm: AES.
pub const ALGORITHM_AES: u32 = 0x03;
/// Block Cipher Mode: GCM.
pub const MODE_GCM: u32 = 0x09;
/// Cryptographic Usage Mask bits: Encrypt | Decrypt.
pub const USAGE_ENCRYPT_DECRYPT: i32 = 0x04 | 0x08;
/// Name Type: Uninterpreted Text String.
pub const NAME_TYPE_TEXT: u32 = 0x01;
/// Key Format Type: Raw.
pub const KEY_FORMAT_RAW: u32 = 0x01;
/// Revocation Reason Code: Superseded (a newer KEK version replaced it).
pub const REVOCATION_SUPERSEDED: u32 = 0x05;
/// Result Status: Success.
pub const RESULT_SUCCESS: u32 = 0x00;
/// Batch Error Continuation Option Continue: a failed batch item does not
/// stop the server from answering the items after it.
pub const BATCH_CONTINUE: u32 = 0x01;

/// KMIP object states (section 9.1.3.2.17).
#[allow(missing_docs)]
pub mod state {
    pub const PRE_ACTIVE: u32 = 1;
    pub const ACTIVE: u32 = 2;
    pub const DEACTIVATED: u32 = 3;
    pub const COMPROMISED: u32 = 4;
    pub const DESTROYED: u32 = 5;
    pub const DESTROYED_COMPROMISED: u32 = 6;
}

/// Result Reason enumeration (section 9.1.3.2.29).
#[allow(missing_docs)]
pub mod reason {
    pub const ITEM_NOT_FOUND: u32 = 0x01;
    pub const AUTHENTICATION_NOT_SUCCESSFUL: u32 = 0x03;
    pub const INVALID_MESSAGE: u32 = 0x04;
    pub const OPERATION_NOT_SUPPORTED: u32 = 0x05;
    pub const INVALID_FIELD: u32 = 0x07;
    pub const FEATURE_NOT_SUPPORTED: u32 = 0x08;
    pub const CRYPTOGRAPHIC_FAILURE: u32 = 0x0A;
    pub const ILLEGAL_OPERATION: u32 = 0x0B;
    pub const PERMISSION_DENIED: u32 = 0x0C;
    pub const GENERAL_FAILURE: u32 = 0x100;
}

/// The spec's name of an operation, for messages.
pub fn operation_name(op: u32) -> &'static str {
    match op {
        operation::CREATE => "Create",
        operation::LOCATE => "Locate",
        operation::GET => "Get",
        operation::GET_ATTRIBUTES => "GetAttributes",
        operation::ACTIVATE => "Activate",
        operation::REVOKE => "Revoke",
        operation::DESTROY => "Destroy",
        operation::DISCOVER_VERSIONS => "DiscoverVersions",
        operation::ENCRYPT => "Encrypt",
        operation::DECRYPT => "Decrypt",
        _ => "unknown operation",
    }
}

/// The spec's name of a result reason, for messages.
pub fn reason_name(code: u32) -> &'static str {
    match code {
        reason::ITEM_NOT_FOUND => "Item Not Found",
        0x02 => "Response Too Large",
        reason::AUTHENTICATION_NOT_SUCCESSFUL => "Authentication Not Successful",
        reason::INVALID_MESSAGE => "Invalid Message",
        reason::OPERATION_NOT_SUPPORTED => "Operation Not Supported",
        0x06 => "Missing Data",
        reason::INVALID_FIELD => "Invalid Field",
        reason::FEATURE_NOT_SUPPORTED => "Feature Not Supported",
        0x09 => "Operation Canceled By Requester",
        reason::CRYPTOGRAPHIC_FAILURE => "Cryptographic Failure",
        reason::ILLEGAL_OPERATION => "Illegal Operation",
        reason::PERMISSION_DENIED => "Permission Denied",
        0x0D => "Object Archived",
        0x0E => "Index Out Of Bounds",
        _ => "General Failure",
    }
}

/// The spec's name of a state, for messages.
pub fn state_name(code: u32) -> &'static str {
    match code {
        state::PRE_ACTIVE => "Pre-Active",
        state::ACTIVE => "Active",
        state::DEACTIVATED => "Deactivated",
        state::COMPROMISED => "Compromised",
        state::DESTROYED => "Destroyed",
        state::DESTROYED_COMPROMISED => "Destroyed Compromised",
        _ => "unknown state",
    }
}
