//! The `.control` files: the command language and the status text.
//!
//! * [`command`]: parsing what is written to a `.control` file.
//! * [`status`]: rendering what reading one shows.
//! * [`timefmt`]: UTC timestamps for humans.

pub mod command;
pub mod status;
pub mod timefmt;
