//! Memory maps (stub).
