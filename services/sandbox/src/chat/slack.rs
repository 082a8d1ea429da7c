//! Fake slack: filled in by the slack helper.
