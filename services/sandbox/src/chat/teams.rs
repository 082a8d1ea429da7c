//! Fake teams: filled in by the teams helper.
