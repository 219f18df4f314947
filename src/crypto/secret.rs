//! Secret key types.
//!
//! Every key in vmcryptfs is 32 bytes (AES-256). Each role has its own type so
//! that a KEK can never be passed where a DEK is expected. All of them
//! zeroize their bytes on drop, and their `Debug` output is redacted so that a
//! stray `{:?}` in a log line can never print key material.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length in bytes of every key vmcryptfs handles.
pub const KEY_LEN: usize = 32;

macro_rules! secret_key_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// Wraps existing key bytes. The caller's copy should itself be
            /// zeroized (or be a `Zeroizing` buffer).
            pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
                Self(bytes)
            }

            /// Builds the key from a slice; `None` if it is not 32 bytes long.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                let array: [u8; KEY_LEN] = bytes.try_into().ok()?;
                Some(Self(array))
            }

            /// A fresh key from the operating system's CSPRNG.
            pub fn generate() -> Self {
                let mut bytes = [0u8; KEY_LEN];
                crate::crypto::random::fill(&mut bytes);
                Self(bytes)
            }

            /// The raw key bytes. Only crypto code should call this.
            pub fn expose(&self) -> &[u8; KEY_LEN] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(<redacted>)"))
            }
        }
    };
}

secret_key_type!(
    /// A VM's data encryption key. One per DEK generation of a VM home; it
    /// never leaves memory unwrapped.
    Dek
);
secret_key_type!(
    /// A key encryption key held by a key provider. It wraps DEKs.
    Kek
);
secret_key_type!(
    /// The embedded provider's root of trust: it wraps the KEKs at rest.
    MasterKey
);
secret_key_type!(
    /// A key derived for one purpose (one file's content, one header MAC).
    DerivedKey
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_is_redacted() {
        let dek = Dek::from_bytes([0xAB; KEY_LEN]);
        let printed = format!("{dek:?}");
        assert_eq!(printed, "Dek(<redacted>)");
        assert!(!printed.to_lowercase().contains("ab"));
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(Kek::from_slice(&[0u8; 31]).is_none());
        assert!(Kek::from_slice(&[0u8; 33]).is_none());
        assert!(Kek::from_slice(&[0u8; 32]).is_some());
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(Dek::generate().expose(), Dek::generate().expose());
    }
}
