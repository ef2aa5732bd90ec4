//! Shared helpers for pangate's integration tests: prerequisite checks and cleanup guards.
