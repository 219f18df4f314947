//! The embedded key provider (sled).
