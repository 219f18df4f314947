//! frontend (under construction)
