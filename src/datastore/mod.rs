//! datastore (under construction)
