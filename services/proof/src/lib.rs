//! What an auditor checks offline, with nothing but this crate (no RocksDB, no NATS):
//!
//! Module map:
//! - [`attest`]: signed statements between services (decisions and grants), and the keys
//!   trusted to sign them.
//! - [`bundle`]: evidence bundles (`.tar.gz`): writing them from disk-staged files, and
//!   verifying one completely, offline.
//! - [`checkpoint`]: signed checkpoints (C2SP tlog-checkpoint in a C2SP signed note, Ed25519).
//! - [`cosignature`]: witness cosignatures (C2SP tlog-cosignature) and the witnessed
//!   checkpoint (RFC 6962 tree of the same leaves) they are over.
//! - [`entry`]: the byte-exact ledger entry encoding and its BLAKE3 hash (`schemas/ledger.md`).
//! - [`recording`]: session recordings (asciicast v2) rebuilt from session events.
//! - [`merkle`]: the RFC 9162-shaped Merkle tree (BLAKE3): roots, inclusion and consistency
//!   proofs from stored perfect subtrees, and their verification.
//! - [`rfc6962`]: the same leaves in an RFC 6962 SHA-256 tree, for witnesses.
#![forbid(unsafe_code)]

pub mod attest;
pub mod bundle;
pub mod checkpoint;
pub mod cosignature;
pub mod entry;
pub mod merkle;
pub mod recording;
pub mod rfc6962;
