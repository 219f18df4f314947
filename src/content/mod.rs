//! content (under construction)
