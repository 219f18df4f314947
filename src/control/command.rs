//! Commands accepted by `.control` files.
//!
//! One command per line; blank lines and surrounding whitespace are
//! ignored. A write is accepted only if every line in it parses, so a
//! malformed write changes nothing.

use crate::datastore::scrub::Rate;

/// Where the control file lives, which decides the commands it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ControlScope {
    /// `VM/.control`.
    VmHome,
    /// `MNT/.control`, the datastore root.
    Datastore,
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlCommand {
    /// Shallow re-key of this VM home.
    Rekey,
    /// Shallow re-key of this VM home that moves it to the named provider
    /// (`rekey-to NAME`); only the bundle changes.
    RekeyTo(String),
    /// Shallow re-key of every VM home in the datastore.
    RekeyAll,
    /// Drop the cached DEKs of every VM home with no open files, as a host
    /// reboot would; the next access unwraps again through the provider.
    FlushKeys,
    /// Check this VM home in the background (`scrub [rate=50M]`), at the
    /// given rate or the mount's `scrub_rate`.
    Scrub(Option<Rate>),
    /// Scrub every VM home of the datastore, one after the other.
    ScrubAll(Option<Rate>),
}

impl ControlCommand {
    /// The command word.
    pub fn word(&self) -> &'static str {
        match self {
            ControlCommand::Rekey => "rekey",
            ControlCommand::RekeyTo(_) => "rekey-to",
            ControlCommand::RekeyAll => "rekey-all",
            ControlCommand::FlushKeys => "flush-keys",
            ControlCommand::Scrub(_) => "scrub",
            ControlCommand::ScrubAll(_) => "scrub-all",
        }
    }
}

/// Largest write a control file accepts.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// Why a write to a control file was rejected (the write fails with EINVAL
/// and this text appears as `last-result`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but whitespace.
    #[error("empty command; valid commands here: {valid}")]
    Empty {
        /// Valid commands for the scope.
        valid: &'static str,
    },
    /// Longer than [`MAX_COMMAND_BYTES`].
    #[error("command too long ({len} bytes; the limit is {MAX_COMMAND_BYTES})")]
    TooLong {
        /// The length written.
        len: usize,
    },
    /// Not UTF-8 text.
    #[error("command is not UTF-8 text")]
    NotText,
    /// An unknown command word.
    #[error("unknown command {word}; valid commands here: {valid}")]
    Unknown {
        /// The word, quoted and escaped (shortened if long).
        word: String,
        /// Valid commands for the scope.
        valid: &'static str,
    },
    /// `rekey-to` without a valid provider name.
    #[error("rekey-to needs one provider name (`rekey-to NAME`, NAME as in `vmcryptfs provider list`); got {got}")]
    BadProviderName {
        /// What was written, quoted and escaped (shortened if long).
        got: String,
    },
    /// `scrub` or `scrub-all` with something other than `rate=RATE`.
    #[error(
        "{word} takes an optional rate=RATE (bytes a second: 50M, 512K, unlimited); got {got}"
    )]
    BadScrubArgument {
        /// The command.
        word: &'static str,
        /// What was written, quoted and escaped (shortened if long).
        got: String,
    },
    /// A known command followed by more text.
    #[error("command {word} takes no arguments (got {rest})")]
    UnexpectedArguments {
        /// The command.
        word: &'static str,
        /// The extra text, quoted and escaped (shortened if long).
        rest: String,
    },
}

fn valid_words(scope: ControlScope) -> &'static str {
    match scope {
        ControlScope::VmHome => "rekey, rekey-to NAME, scrub [rate=RATE]",
        ControlScope::Datastore => "rekey-all, flush-keys, scrub-all [rate=RATE]",
    }
}

/// `text` quoted with control characters escaped, cut to a length that
/// keeps `last-result` readable whatever was written.
fn shorten(text: &str) -> String {
    const LIMIT: usize = 48;
    let quoted = format!("{text:?}");
    match quoted.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &quoted[..cut]),
        None => quoted,
    }
}

/// The argument of `scrub` / `scrub-all`: nothing, or `rate=RATE`.
fn scrub_rate(word: &'static str, rest: &str) -> Result<Option<Rate>, ParseError> {
    if rest.is_empty() {
        return Ok(None);
    }
    let bad = || ParseError::BadScrubArgument {
        word,
        got: shorten(rest),
    };
    let value = rest.strip_prefix("rate=").ok_or_else(bad)?;
    Rate::parse(value).map(Some).map_err(|_| bad())
}

/// Parses a whole write to a control file.
pub fn parse(scope: ControlScope, input: &[u8]) -> Result<Vec<ControlCommand>, ParseError> {
    if input.len() > MAX_COMMAND_BYTES {
        return Err(ParseError::TooLong { len: input.len() });
    }
    let text = std::str::from_utf8(input).map_err(|_| ParseError::NotText)?;
    let valid = valid_words(scope);
    let mut commands = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let command = match (scope, word) {
            (ControlScope::VmHome, "rekey") => ControlCommand::Rekey,
            (ControlScope::VmHome, "rekey-to") => {
                let valid_name = rest == crate::keys::embedded::EMBEDDED_PROVIDER_NAME
                    || crate::keys::registry::check_name(rest).is_ok();
                if !valid_name {
                    return Err(ParseError::BadProviderName { got: shorten(rest) });
                }
                commands.push(ControlCommand::RekeyTo(rest.to_owned()));
                continue;
            }
            (ControlScope::VmHome, "scrub") | (ControlScope::Datastore, "scrub-all") => {
                let word = if scope == ControlScope::VmHome {
                    "scrub"
                } else {
                    "scrub-all"
                };
                let rate = scrub_rate(word, rest)?;
                commands.push(match scope {
                    ControlScope::VmHome => ControlCommand::Scrub(rate),
                    ControlScope::Datastore => ControlCommand::ScrubAll(rate),
                });
                continue;
            }
            (ControlScope::Datastore, "rekey-all") => ControlCommand::RekeyAll,
            (ControlScope::Datastore, "flush-keys") => ControlCommand::FlushKeys,
            _ => {
                return Err(ParseError::Unknown {
                    word: shorten(word),
                    valid,
                })
            }
        };
        if !rest.is_empty() {
            return Err(ParseError::UnexpectedArguments {
                word: command.word(),
                rest: shorten(rest),
            });
        }
        commands.push(command);
    }
    if commands.is_empty() {
        return Err(ParseError::Empty { valid });
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ControlScope::*;

    #[test]
    fn accepts_commands_with_whitespace() {
        assert_eq!(parse(VmHome, b"rekey\n"), Ok(vec![ControlCommand::Rekey]));
        assert_eq!(
            parse(VmHome, b"  rekey \r\n\n"),
            Ok(vec![ControlCommand::Rekey])
        );
        assert_eq!(
            parse(Datastore, b"rekey-all"),
            Ok(vec![ControlCommand::RekeyAll])
        );
        assert_eq!(
            parse(VmHome, b"rekey\nrekey\n"),
            Ok(vec![ControlCommand::Rekey, ControlCommand::Rekey])
        );
        assert_eq!(
            parse(VmHome, b"scrub\n"),
            Ok(vec![ControlCommand::Scrub(None)])
        );
        assert_eq!(
            parse(Datastore, b"scrub-all rate=50M\n"),
            Ok(vec![ControlCommand::ScrubAll(Some(Rate(Some(50 << 20))))])
        );
        assert_eq!(
            parse(VmHome, b"rekey-to  kms-2 \nrekey-to local\n"),
            Ok(vec![
                ControlCommand::RekeyTo("kms-2".into()),
                ControlCommand::RekeyTo("local".into())
            ])
        );
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        assert!(matches!(
            parse(VmHome, b"\n \n"),
            Err(ParseError::Empty { .. })
        ));
        assert!(matches!(
            parse(VmHome, b"rekey-all"),
            Err(ParseError::Unknown { .. })
        ));
        assert!(matches!(
            parse(Datastore, b"rekey"),
            Err(ParseError::Unknown { .. })
        ));
        assert!(matches!(
            parse(VmHome, b"rekey now"),
            Err(ParseError::UnexpectedArguments { .. })
        ));
        assert_eq!(parse(VmHome, &[0xff, 0xfe]), Err(ParseError::NotText));
        assert!(matches!(
            parse(VmHome, &[b'a'; 5000]),
            Err(ParseError::TooLong { len: 5000 })
        ));
        assert!(matches!(
            parse(VmHome, b"rekey\nbogus\n"),
            Err(ParseError::Unknown { .. })
        ));
        for bad in [
            &b"rekey-to"[..],
            b"rekey-to a b",
            b"rekey-to Bad",
            b"rekey-to ../x",
        ] {
            assert!(
                matches!(parse(VmHome, bad), Err(ParseError::BadProviderName { .. })),
                "{bad:?}"
            );
        }
        for bad in [
            &b"scrub now"[..],
            b"scrub rate=",
            b"scrub rate=5X",
            b"scrub rate=1M x",
        ] {
            assert!(
                matches!(parse(VmHome, bad), Err(ParseError::BadScrubArgument { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse(VmHome, b"scrub-all"),
            Err(ParseError::Unknown { .. })
        ));
        assert!(matches!(
            parse(Datastore, b"rekey-to kms"),
            Err(ParseError::Unknown { .. })
        ));
        let long = "x".repeat(200);
        let msg = parse(VmHome, long.as_bytes()).unwrap_err().to_string();
        assert!(msg.len() < 150, "{msg}");
        // Found by the fuzzer: escaped control characters must not blow up
        // the message either.
        let controls = "\u{1a}".repeat(100);
        let msg = parse(VmHome, controls.as_bytes()).unwrap_err().to_string();
        assert!(msg.len() < 150, "{msg}");
    }
}
