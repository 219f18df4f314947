//! The master key file.
