//! The virtual files: `.control` (command language, status text),
//! `.control.json` and `.stats`.
//!
//! * [`command`]: parsing what is written to a `.control` file.
//! * [`execute`]: running it against the datastore.
//! * [`status`]: rendering what reading one shows.
//! * [`root_cache`]: the root's status lines of every VM home, kept until
//!   its status changes.
//! * [`timefmt`]: UTC timestamps for humans.
//! * [`virtual_file`]: which virtual files exist where.
//! * [`metrics`]: the `.stats` counters in Prometheus text format.

pub mod command;
pub mod execute;
pub mod metrics;
pub mod root_cache;
pub mod status;
pub mod timefmt;
pub mod virtual_file;
