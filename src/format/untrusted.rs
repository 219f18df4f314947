//! Showing text that came from the datastore: escaped and bounded.
//!
//! Whoever can write the datastore chooses its directory names, file names
//! and every bundle byte before it authenticates (DESIGN.md §3.1). Such
//! text reaches status files, logs and error messages, where a newline
//! could forge a `key: value` line, a terminal escape could rewrite what
//! an operator sees, and a long value could bury the rest. So everything
//! shown from there goes through [`escape`]: printable ASCII stays, every
//! other byte (and `\`, so the output is unambiguous) becomes `\xNN`, and
//! a value longer than its limit is cut with a marker saying how much was
//! left out.
//!
//! It lives in `format` because this is the layer that parses untrusted
//! bytes, and it is pure: `keys`, `datastore`, `control` and the frontend
//! all sit above it and use the same rule. Content read from a datastore
//! file is never shown at all, not even escaped; only names and parsed
//! bundle fields are.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Most bytes of a name (a directory or file name) shown: `NAME_MAX`, so a
/// name the kernel accepts is shown whole.
pub const NAME_LIMIT: usize = 255;

/// Most bytes of a path shown: `PATH_MAX`.
pub const PATH_LIMIT: usize = 4096;

/// Most bytes of a bundle string field (provider, kek_id) shown before the
/// bundle authenticates: the longest the format allows (FORMAT.md §4).
pub const FIELD_LIMIT: usize = 255;

/// `bytes`, escaped: printable ASCII except `\` as is, everything else as
/// `\xNN`; past `limit` input bytes, cut with `...[+N bytes]`.
pub fn escape(bytes: &[u8], limit: usize) -> String {
    let shown = &bytes[..bytes.len().min(limit)];
    let mut out = String::with_capacity(shown.len());
    for &byte in shown {
        if (0x20..0x7f).contains(&byte) && byte != b'\\' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    if bytes.len() > shown.len() {
        out.push_str(&format!("...[+{} bytes]", bytes.len() - shown.len()));
    }
    out
}

/// A directory or file name read from the datastore, for display.
pub fn name(name: &OsStr) -> String {
    escape(name.as_bytes(), NAME_LIMIT)
}

/// A path in the datastore (its root chosen by the operator, the rest by
/// whoever writes the datastore), for display.
pub fn path(path: &Path) -> String {
    escape(path.as_os_str().as_bytes(), PATH_LIMIT)
}

/// A message of our own that may embed untrusted pieces (an error's
/// text), for a line-oriented sink (`key: value` status lines, log
/// lines): control characters become `\xNN` (or `\u{NNNN}`), so the
/// message stays one line whatever it quotes; everything else is kept.
/// The pieces themselves are escaped where they enter the message (names
/// with [`name`] and [`path`], bundle fields with [`field`]); this is the
/// guard for any piece that was not.
pub fn line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match u32::from(c) {
            code if code < 0x80 && c.is_control() => out.push_str(&format!("\\x{code:02x}")),
            code if c.is_control() => out.push_str(&format!("\\u{{{code:04x}}}")),
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A string field of a bundle that has not authenticated (or came from
/// one that had), for display. Borrows when nothing needs escaping, which
/// is the case for every field vmcryptfs itself writes.
pub fn field(value: &str) -> Cow<'_, str> {
    let clean = value.len() <= FIELD_LIMIT
        && value
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'\\');
    if clean {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(escape(value.as_bytes(), FIELD_LIMIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn printable_ascii_is_kept_and_the_rest_escaped() {
        assert_eq!(escape(b"vm-1 (copy)", 64), "vm-1 (copy)");
        assert_eq!(escape(b"a\nstate: unlocked", 64), "a\\x0astate: unlocked");
        assert_eq!(escape(b"\x1b[2J\x7f\\", 64), "\\x1b[2J\\x7f\\x5c");
        assert_eq!(escape("é".as_bytes(), 64), "\\xc3\\xa9");
        assert_eq!(escape(b"", 64), "");
    }

    #[test]
    fn long_values_are_cut_with_a_marker() {
        assert_eq!(escape(b"abcdef", 4), "abcd...[+2 bytes]");
        assert_eq!(escape(b"abcd", 4), "abcd");
        let long = vec![b'x'; 4096];
        let shown = name(OsStr::from_bytes(&long));
        assert!(shown.len() < 300, "{}", shown.len());
        assert!(shown.ends_with("...[+3841 bytes]"), "{shown}");
    }

    #[test]
    fn names_and_fields_escape_the_same_way() {
        assert_eq!(name(OsStr::from_bytes(b"vm\xff\n")), "vm\\xff\\x0a");
        assert!(matches!(field("local"), Cow::Borrowed("local")));
        assert_eq!(field("kms\r\nvm: x"), "kms\\x0d\\x0avm: x");
        // Nothing that is not printable ASCII survives, whatever the input.
        let every_byte: Vec<u8> = (0..=255).collect();
        let shown = escape(&every_byte, 256);
        assert!(shown.bytes().all(|b| (0x20..0x7f).contains(&b)), "{shown}");
        assert_eq!(path(Path::new("/ds/vm\n1/a.vmx")), "/ds/vm\\x0a1/a.vmx");
    }

    #[test]
    fn a_line_stays_one_line() {
        assert!(matches!(line("VM vm1 is locked: …"), Cow::Borrowed(_)));
        assert_eq!(
            line("reason\nstate: unlocked\r\u{85}"),
            "reason\\x0astate: unlocked\\x0d\\u{0085}"
        );
    }
}
