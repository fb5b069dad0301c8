//! Command-line parsing (stub).
