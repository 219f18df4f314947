//! The integration tests: one binary, one module per area. Each area
//! once was its own test binary, and each of those linked the release
//! build of AWS-LC again; one binary links it once. A test's name
//! starts with its area (`acls::...`), so `scripts/test acls` runs that
//! area.
//!
//! All tests share one process: none may change process-wide state
//! (environment, working directory, umask, signal dispositions). A test
//! that needs such a change makes it in a child process.

mod common;

mod acls;
mod bad_input;
mod blocking_locks;
mod bounded_work;
mod bundle_authentication;
mod cache_modes;
mod content_formats;
mod control_input;
mod control_rekey;
mod conversions_in_use;
mod crash_conversions;
mod crash_safety;
mod debian_package;
mod disk_pattern;
mod errors;
mod file_semantics;
mod fsck;
mod generated_docs;
mod guest_boot;
mod hostile_datastore;
mod hypervisor_qemu;
mod kernel_cache_fill;
mod key_lifecycle;
mod kmip_client;
mod kmip_provider;
mod locks;
mod mount_helper;
mod mount_privacy;
mod mount_smoke;
mod owned_files;
mod packaging;
mod parallel_io;
mod posix_semantics;
mod process_hygiene;
mod provider_cli;
mod rekey_invariance;
mod scrub;
mod sparse_discard;
mod tampering;
mod test_tools;
mod virtual_files;
mod vtpm_swtpm;
mod xattrs;
