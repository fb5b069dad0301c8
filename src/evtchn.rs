//! Event channels: waiting for events without burning CPU (being written).
