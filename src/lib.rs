//! vmcryptfs: a FUSE filesystem that presents encrypted VM homes as plain
//! files, following vSphere VM Encryption.
//!
//! The modules read as the architecture, bottom to top. Dependencies
//! point downward only: a module uses the ones above it in this list and
//! never one below it (the test `layers::dependencies_point_downward`
//! reads this list and checks every `crate::` path in `src/`):
//!
//! * [`crypto`]: AEADs, HKDF, secret key types. Knows nothing of files.
//! * [`format`]: the on-disk formats (file header, key bundle) and the pure
//!   offset arithmetic between plaintext and ciphertext. See docs/FORMAT.md.
//! * [`keys`]: key providers (the embedded sled store, KMIP key servers)
//!   behind one trait.
//! * [`content`]: block-level encrypted I/O on one backing file, with the
//!   range locks that let writers of different blocks run in parallel.
//! * [`datastore`]: VM homes, their bundles and policies, the per-mount key
//!   cache and shallow re-key.
//! * [`control`]: the `.control` command language and status rendering.
//! * [`frontend`]: the thin FUSE layer that translates kernel requests.
//! * [`cli`]: the command-line interface.

// Two audited exceptions, each `unsafe` stating why it holds:
// `crypto::block_aead` calls AWS-LC's AEAD through its C interface
// (`aws-lc-sys`), because the safe wrappers take only 96-bit nonces; and
// `cli::malloc_settings` calls glibc's `mallopt`, which no crate wraps and
// which takes no pointers. Nothing else may use `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod content;
pub mod control;
pub mod crypto;
pub mod datastore;
pub mod format;
pub mod frontend;
pub mod keys;

#[cfg(test)]
mod layers {
    use std::path::Path;

    /// The layer order, as the crate documentation above lists it.
    fn documented_order() -> Vec<String> {
        include_str!("lib.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("//! * [`"))
            .filter_map(|rest| rest.split_once('`').map(|(name, _)| name.to_string()))
            .collect()
    }

    /// Every `crate::NAME` in `text`, with its line number.
    fn crate_paths(text: &str) -> Vec<(usize, &str)> {
        let mut found = Vec::new();
        for (number, line) in text.lines().enumerate() {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                found.push((number + 1, &rest[..end]));
            }
        }
        found
    }

    fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn the_documented_order_names_every_module_once() {
        let mut documented = documented_order();
        documented.sort();
        let mut declared: Vec<String> = include_str!("lib.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("pub mod "))
            .map(|name| name.trim_end_matches(';').to_string())
            .collect();
        declared.sort();
        assert_eq!(documented, declared);
    }

    #[test]
    fn dependencies_point_downward() {
        let order = documented_order();
        let rank = |name: &str| order.iter().position(|layer| layer == name);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut upward = Vec::new();
        for layer in &order {
            let mut files = Vec::new();
            if src.join(layer).is_dir() {
                rust_files(&src.join(layer), &mut files);
            }
            files.push(src.join(format!("{layer}.rs")));
            for file in files.iter().filter(|f| f.exists()) {
                let text = std::fs::read_to_string(file).unwrap();
                for (line, target) in crate_paths(&text) {
                    if rank(target).is_some_and(|t| t > rank(layer).unwrap()) {
                        upward.push(format!("{}:{line}: {layer} -> {target}", file.display()));
                    }
                }
            }
        }
        assert!(upward.is_empty(), "uses of a higher layer: {upward:#?}");
    }

    #[test]
    fn the_check_sees_an_upward_use() {
        let found =
            crate_paths("use crate::cli::{CliError};\nlet x = crate::format::untrusted::path(p);");
        assert_eq!(found, vec![(1, "cli"), (2, "format")]);
    }
}
