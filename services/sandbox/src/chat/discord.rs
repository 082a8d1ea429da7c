//! Fake discord: filled in by the discord helper.
