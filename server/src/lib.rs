//! Strata sync server.
