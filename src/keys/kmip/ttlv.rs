//! A small KMIP TTLV codec: Tag (3 bytes), Type (1), Length (4), Value
//! padded to a multiple of 8 bytes. Pure: no I/O, no KMIP semantics.
//!
//! Decoding never panics on malformed input: every length is checked against
//! the remaining buffer, nesting depth and total size are bounded.

use thiserror::Error;
use zeroize::Zeroize;

/// Largest message the decoder accepts (1 MiB); KMIP replies we need are tiny.
pub const MAX_MESSAGE: usize = 1 << 20;
/// Deepest structure nesting the decoder accepts.
pub const MAX_DEPTH: usize = 16;

/// A decoded or to-be-encoded TTLV value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Type 0x01: nested items.
    Structure(Vec<Item>),
    /// Type 0x02: 32-bit signed integer.
    Integer(i32),
    /// Type 0x03: 64-bit signed integer.
    LongInteger(i64),
    /// Type 0x04: big-endian two's complement, multiple of 8 bytes.
    BigInteger(Vec<u8>),
    /// Type 0x05: 32-bit enumeration.
    Enumeration(u32),
    /// Type 0x06: boolean, encoded as 8 bytes 0 or 1.
    Boolean(bool),
    /// Type 0x07: UTF-8 text.
    TextString(String),
    /// Type 0x08: opaque bytes.
    ByteString(Vec<u8>),
    /// Type 0x09: seconds since the epoch.
    DateTime(i64),
    /// Type 0x0A: seconds.
    Interval(u32),
}

/// Byte and text strings may hold key material (a Get response, the DEK in
/// an Encrypt request or Decrypt response), so they are wiped when dropped.
impl Drop for Value {
    fn drop(&mut self) {
        match self {
            Value::BigInteger(bytes) | Value::ByteString(bytes) => bytes.zeroize(),
            Value::TextString(text) => text.zeroize(),
            _ => {}
        }
    }
}

/// One tagged item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The 24-bit tag (KMIP tags are 0x42xxxx).
    pub tag: u32,
    /// The value.
    pub value: Value,
}

/// Why decoding failed. Never carries the bytes themselves.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TtlvError {
    /// The input ended inside an item.
    #[error("TTLV: truncated at offset {0}")]
    Truncated(usize),
    /// A type byte we do not know.
    #[error("TTLV: unknown type 0x{0:02x} at offset {1}")]
    UnknownType(u8, usize),
    /// A fixed-size type with the wrong length, or bad padding/boolean.
    #[error("TTLV: invalid value at offset {0}")]
    Invalid(usize),
    /// Message or nesting too large.
    #[error("TTLV: message exceeds limits")]
    TooLarge,
    /// Bytes left after the top-level item.
    #[error("TTLV: {0} trailing bytes")]
    Trailing(usize),
}

impl Item {
    /// Builds an item.
    pub fn new(tag: u32, value: Value) -> Self {
        Item { tag, value }
    }

    /// A structure item.
    pub fn structure(tag: u32, items: Vec<Item>) -> Self {
        Item::new(tag, Value::Structure(items))
    }

    /// A text string item.
    pub fn text(tag: u32, text: &str) -> Self {
        Item::new(tag, Value::TextString(text.to_owned()))
    }

    /// An enumeration item.
    pub fn enumeration(tag: u32, value: u32) -> Self {
        Item::new(tag, Value::Enumeration(value))
    }

    /// An integer item.
    pub fn integer(tag: u32, value: i32) -> Self {
        Item::new(tag, Value::Integer(value))
    }

    /// A byte string item.
    pub fn bytes(tag: u32, bytes: &[u8]) -> Self {
        Item::new(tag, Value::ByteString(bytes.to_vec()))
    }

    /// The first child with `tag`, if this is a structure.
    pub fn child(&self, tag: u32) -> Option<&Item> {
        self.children(tag).next()
    }

    /// Every child with `tag`, if this is a structure.
    pub fn children(&self, tag: u32) -> impl Iterator<Item = &Item> {
        let items: &[Item] = match &self.value {
            Value::Structure(items) => items,
            _ => &[],
        };
        items.iter().filter(move |i| i.tag == tag)
    }

    /// The text of a text string item.
    pub fn as_text(&self) -> Option<&str> {
        match &self.value {
            Value::TextString(text) => Some(text),
            _ => None,
        }
    }

    /// The bytes of a byte string item.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match &self.value {
            Value::ByteString(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The value of an enumeration item.
    pub fn as_enumeration(&self) -> Option<u32> {
        match self.value {
            Value::Enumeration(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a date-time item (seconds since the epoch).
    pub fn as_date_time(&self) -> Option<i64> {
        match self.value {
            Value::DateTime(v) => Some(v),
            _ => None,
        }
    }

    /// Appends the encoding of this item to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.tag.to_be_bytes()[1..]);
        let ty = type_byte(&self.value);
        out.push(ty);
        let len_pos = out.len();
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        match &self.value {
            Value::Structure(items) => items.iter().for_each(|i| i.encode_into(out)),
            Value::Integer(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::LongInteger(v) | Value::DateTime(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::BigInteger(b) | Value::ByteString(b) => out.extend_from_slice(b),
            Value::Enumeration(v) | Value::Interval(v) => out.extend_from_slice(&v.to_be_bytes()),
            Value::Boolean(b) => out.extend_from_slice(&u64::from(*b).to_be_bytes()),
            Value::TextString(s) => out.extend_from_slice(s.as_bytes()),
        }
        let len = (out.len() - start) as u32;
        out[len_pos..len_pos + 4].copy_from_slice(&len.to_be_bytes());
        out.resize(out.len() + pad(len as usize), 0);
    }

    /// The encoding of this item.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes exactly one item occupying all of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Item, TtlvError> {
        if buf.len() > MAX_MESSAGE {
            return Err(TtlvError::TooLarge);
        }
        let (item, used) = decode_at(buf, 0, 0)?;
        if used != buf.len() {
            return Err(TtlvError::Trailing(buf.len() - used));
        }
        Ok(item)
    }
}

/// Total length of the message whose 8-byte header starts `header`
/// (for reading exactly one message off a stream).
pub fn message_len(header: &[u8; 8]) -> Result<usize, TtlvError> {
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let total = 8 + len + pad(len);
    if total > MAX_MESSAGE {
        return Err(TtlvError::TooLarge);
    }
    Ok(total)
}

fn pad(len: usize) -> usize {
    (8 - len % 8) % 8
}

fn type_byte(v: &Value) -> u8 {
    match v {
        Value::Structure(_) => 0x01,
        Value::Integer(_) => 0x02,
        Value::LongInteger(_) => 0x03,
        Value::BigInteger(_) => 0x04,
        Value::Enumeration(_) => 0x05,
        Value::Boolean(_) => 0x06,
        Value::TextString(_) => 0x07,
        Value::ByteString(_) => 0x08,
        Value::DateTime(_) => 0x09,
        Value::Interval(_) => 0x0A,
    }
}

fn decode_at(buf: &[u8], off: usize, depth: usize) -> Result<(Item, usize), TtlvError> {
    if depth > MAX_DEPTH {
        return Err(TtlvError::TooLarge);
    }
    let hdr = buf.get(off..off + 8).ok_or(TtlvError::Truncated(off))?;
    let tag = u32::from_be_bytes([0, hdr[0], hdr[1], hdr[2]]);
    let ty = hdr[3];
    let len = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
    let vstart = off + 8;
    let vend = vstart.checked_add(len).ok_or(TtlvError::TooLarge)?;
    let end = vend + pad(len);
    let v = buf.get(vstart..vend).ok_or(TtlvError::Truncated(off))?;
    let padding = buf.get(vend..end).ok_or(TtlvError::Truncated(off))?;
    if padding.iter().any(|&b| b != 0) {
        return Err(TtlvError::Invalid(off));
    }
    let fixed = |n: usize| {
        if len == n {
            Ok(())
        } else {
            Err(TtlvError::Invalid(off))
        }
    };
    let be4 = || [v[0], v[1], v[2], v[3]];
    let be8 = || [v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]];
    let value = match ty {
        0x01 => {
            let mut items = Vec::new();
            let mut p = vstart;
            while p < vend {
                let (item, next) = decode_at(&buf[..vend], p, depth + 1)?;
                items.push(item);
                p = next;
            }
            Value::Structure(items)
        }
        0x02 => {
            fixed(4)?;
            Value::Integer(i32::from_be_bytes(be4()))
        }
        0x03 => {
            fixed(8)?;
            Value::LongInteger(i64::from_be_bytes(be8()))
        }
        0x04 => {
            if len % 8 != 0 {
                return Err(TtlvError::Invalid(off));
            }
            Value::BigInteger(v.to_vec())
        }
        0x05 => {
            fixed(4)?;
            Value::Enumeration(u32::from_be_bytes(be4()))
        }
        0x06 => {
            fixed(8)?;
            match u64::from_be_bytes(be8()) {
                0 => Value::Boolean(false),
                1 => Value::Boolean(true),
                _ => return Err(TtlvError::Invalid(off)),
            }
        }
        0x07 => {
            Value::TextString(String::from_utf8(v.to_vec()).map_err(|_| TtlvError::Invalid(off))?)
        }
        0x08 => Value::ByteString(v.to_vec()),
        0x09 => {
            fixed(8)?;
            Value::DateTime(i64::from_be_bytes(be8()))
        }
        0x0A => {
            fixed(4)?;
            Value::Interval(u32::from_be_bytes(be4()))
        }
        t => return Err(TtlvError::UnknownType(t, off)),
    };
    Ok((Item { tag, value }, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '|'], "")).unwrap()
    }

    // Vectors from the KMIP 1.x specification, section 9.1.2 examples.
    #[test]
    fn spec_vectors() {
        let cases = [
            (
                Item::new(0x420020, Value::Integer(8)),
                "420020 | 02 | 00000004 | 00000008 00000000",
            ),
            (
                Item::new(0x420020, Value::LongInteger(123456789000000000)),
                "420020 | 03 | 00000008 | 01B69B4BA5749200",
            ),
            (
                Item::new(0x420020, Value::Enumeration(255)),
                "420020 | 05 | 00000004 | 000000FF 00000000",
            ),
            (
                Item::new(0x420020, Value::Boolean(true)),
                "420020 | 06 | 00000008 | 0000000000000001",
            ),
            (
                Item::new(0x420020, Value::TextString("Hello World".into())),
                "420020 | 07 | 0000000B | 48656C6C6F20576F726C64 0000000000",
            ),
            (
                Item::new(0x420020, Value::ByteString(vec![1, 2, 3])),
                "420020 | 08 | 00000003 | 010203 0000000000",
            ),
            (
                Item::new(0x420020, Value::DateTime(0x47DA67F8)),
                "420020 | 09 | 00000008 | 0000000047DA67F8",
            ),
            (
                Item::new(0x420020, Value::Interval(864000)),
                "420020 | 0A | 00000004 | 000D2F00 00000000",
            ),
            (
                Item::new(
                    0x420020,
                    Value::Structure(vec![
                        Item::new(0x420004, Value::Enumeration(254)),
                        Item::new(0x420005, Value::Integer(255)),
                    ]),
                ),
                "420020 | 01 | 00000020 | 420004 | 05 | 00000004 | 000000FE 00000000 \
                 | 420005 | 02 | 00000004 | 000000FF 00000000",
            ),
        ];
        for (item, bytes) in cases {
            let bytes = hex(bytes);
            assert_eq!(item.encode(), bytes, "{item:?}");
            assert_eq!(Item::decode(&bytes).unwrap(), item);
        }
    }

    #[test]
    fn malformed_is_error_not_panic() {
        let good = Item::new(
            0x420020,
            Value::Structure(vec![Item::new(0x420005, Value::TextString("abc".into()))]),
        )
        .encode();
        // Every truncation fails cleanly.
        for n in 0..good.len() {
            assert!(Item::decode(&good[..n]).is_err(), "len {n}");
        }
        // Trailing bytes, bad boolean, bad fixed length, unknown type.
        let mut t = good.clone();
        t.extend_from_slice(&[0; 8]);
        assert_eq!(Item::decode(&t), Err(TtlvError::Trailing(8)));
        assert!(Item::decode(&hex("420020 06 00000008 0000000000000002")).is_err());
        assert!(Item::decode(&hex("420020 02 00000008 0000000000000002")).is_err());
        assert!(matches!(
            Item::decode(&hex("420020 0B 00000000")),
            Err(TtlvError::UnknownType(0x0B, 0))
        ));
        // Huge declared length.
        assert!(Item::decode(&hex("420020 08 FFFFFFFF")).is_err());
        assert_eq!(
            message_len(&[0x42, 0, 0x7b, 1, 0xff, 0xff, 0xff, 0xff]),
            Err(TtlvError::TooLarge)
        );
        // Nesting beyond the limit.
        let mut deep = Item::new(0x420001, Value::Integer(1));
        for _ in 0..=MAX_DEPTH {
            deep = Item::new(0x420001, Value::Structure(vec![deep]));
        }
        assert_eq!(Item::decode(&deep.encode()), Err(TtlvError::TooLarge));
    }
}
