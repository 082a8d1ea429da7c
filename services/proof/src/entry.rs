//! The ledger entry encoding, byte for byte (specified in `schemas/ledger.md`).
//!
//! ```text
//! entry = "gatehouse.ledger.entry.v1" 0x00   domain tag, 26 bytes
//!         index            u64 big-endian    position in the ledger, from 0
//!         stream_sequence  u64 big-endian    JetStream sequence the event was stored at
//!         received_at      i64 big-endian    nanoseconds since the Unix epoch (UTC) at which
//!                                            JetStream stored the event
//!         previous_hash    32 bytes          entry_hash of entry index-1; zeros for index 0
//!         event_length     u32 big-endian
//!         event            event_length bytes, exactly as published
//! entry_hash = BLAKE3(entry)
//! ```
//!
//! The domain tag keeps an entry hash from ever colliding with a hash of something else Gatehouse
//! hashes (Merkle leaves prefix 0x00, nodes 0x01; events are hashed bare for digests).

/// Domain tag, including its terminating zero byte.
pub const DOMAIN_TAG: &[u8; 26] = b"gatehouse.ledger.entry.v1\0";

/// The hash that precedes the first entry.
pub const GENESIS_HASH: Hash = [0u8; 32];

/// Fixed-size part of an encoded entry, before the event bytes.
pub const HEADER_LEN: usize = DOMAIN_TAG.len() + 8 + 8 + 8 + 32 + 4;

pub type Hash = [u8; 32];

/// One decoded ledger entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub stream_sequence: u64,
    /// Nanoseconds since the Unix epoch, UTC.
    pub received_at: i64,
    pub previous_hash: Hash,
    /// The event bytes exactly as published.
    pub event: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("{0} bytes is shorter than an entry header ({HEADER_LEN} bytes)")]
    TooShort(usize),
    #[error("the domain tag is not gatehouse.ledger.entry.v1")]
    BadTag,
    #[error("the event length field says {declared} bytes but {actual} follow")]
    LengthMismatch { declared: usize, actual: usize },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an event of {0} bytes exceeds the 4 GiB an entry can hold")]
pub struct EventTooLarge(pub usize);

impl Entry {
    /// The canonical encoding that is hashed and stored.
    pub fn encode(&self) -> Result<Vec<u8>, EventTooLarge> {
        let header = self.as_ref().header()?;
        let mut out = Vec::with_capacity(HEADER_LEN + self.event.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.event);
        Ok(out)
    }

    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            index: self.index,
            stream_sequence: self.stream_sequence,
            received_at: self.received_at,
            previous_hash: self.previous_hash,
            event: &self.event,
        }
    }

    /// Decodes an encoding produced by [`Entry::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let e = EntryRef::decode(bytes)?;
        Ok(Self {
            index: e.index,
            stream_sequence: e.stream_sequence,
            received_at: e.received_at,
            previous_hash: e.previous_hash,
            event: e.event.to_vec(),
        })
    }
}

/// An entry whose event bytes are borrowed: what a verifier hashes without copying the event
/// into an encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub index: u64,
    pub stream_sequence: u64,
    pub received_at: i64,
    pub previous_hash: Hash,
    pub event: &'a [u8],
}

impl<'a> EntryRef<'a> {
    /// Decodes an encoding, borrowing its event bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() < HEADER_LEN {
            return Err(DecodeError::TooShort(bytes.len()));
        }
        let (tag, rest) = bytes.split_at(DOMAIN_TAG.len());
        if tag != DOMAIN_TAG {
            return Err(DecodeError::BadTag);
        }
        let (index, rest) = take_u64(rest);
        let (stream_sequence, rest) = take_u64(rest);
        let (received_at, rest) = take_u64(rest);
        let (previous_hash, rest) = rest.split_at(32);
        let (len, event) = rest.split_at(4);
        let declared = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if declared != event.len() {
            return Err(DecodeError::LengthMismatch {
                declared,
                actual: event.len(),
            });
        }
        let mut prev = [0u8; 32];
        prev.copy_from_slice(previous_hash);
        Ok(Self {
            index,
            stream_sequence,
            received_at: received_at as i64,
            previous_hash: prev,
            event,
        })
    }

    /// The encoding up to the event bytes.
    pub fn header(&self) -> Result<[u8; HEADER_LEN], EventTooLarge> {
        let len = u32::try_from(self.event.len()).map_err(|_| EventTooLarge(self.event.len()))?;
        let mut out = [0u8; HEADER_LEN];
        let fields: [&[u8]; 6] = [
            DOMAIN_TAG,
            &self.index.to_be_bytes(),
            &self.stream_sequence.to_be_bytes(),
            &self.received_at.to_be_bytes(),
            &self.previous_hash,
            &len.to_be_bytes(),
        ];
        let mut at = 0;
        for field in fields {
            out[at..at + field.len()].copy_from_slice(field);
            at += field.len();
        }
        Ok(out)
    }

    /// `entry_hash` and the Merkle leaf hash of the encoding, as `format` defines the leaf.
    pub fn hashes(&self, format: LedgerFormat) -> Result<(Hash, Hash), EventTooLarge> {
        let header = self.header()?;
        let mut entry = blake3::Hasher::new();
        entry.update(&header);
        entry.update(self.event);
        let hash = *entry.finalize().as_bytes();
        let leaf = match format {
            LedgerFormat::V1 => {
                let mut leaf = blake3::Hasher::new();
                leaf.update(&[0x00]);
                leaf.update(&header);
                leaf.update(self.event);
                *leaf.finalize().as_bytes()
            }
            LedgerFormat::V2 => crate::merkle::leaf_of_entry_hash(&hash),
        };
        Ok((hash, leaf))
    }
}

/// The ledger format, which fixes what a Merkle leaf is (`schemas/ledger.md`, *Merkle tree*).
/// Entries encode and hash the same in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum LedgerFormat {
    /// `leaf = BLAKE3(0x00 ‖ encoding)`: the entry's bytes are hashed twice.
    #[serde(rename = "gatehouse.ledger.v1")]
    V1,
    /// `leaf = BLAKE3(0x00 ‖ entry_hash)`: the entry's bytes are hashed once.
    #[serde(rename = "gatehouse.ledger.v2")]
    V2,
}

impl LedgerFormat {
    /// What new ledgers are written in.
    pub const CURRENT: Self = Self::V2;

    /// The marker stored in the ledger (`meta` `format`) and named in bundles and archives.
    pub fn marker(self) -> &'static str {
        match self {
            Self::V1 => "gatehouse.ledger.v1",
            Self::V2 => "gatehouse.ledger.v2",
        }
    }

    pub fn from_marker(marker: &[u8]) -> Option<Self> {
        [Self::V1, Self::V2]
            .into_iter()
            .find(|f| f.marker().as_bytes() == marker)
    }

    /// The leaf hash of an entry, from its encoding and its entry hash (whichever the format
    /// uses; the other is not looked at).
    pub fn leaf(self, encoding: &[u8], entry_hash: &Hash) -> Hash {
        match self {
            Self::V1 => crate::merkle::leaf_hash(encoding),
            Self::V2 => crate::merkle::leaf_of_entry_hash(entry_hash),
        }
    }

    /// Entry hash and leaf hash of an encoding.
    pub fn hashes(self, encoding: &[u8]) -> (Hash, Hash) {
        let hash = entry_hash(encoding);
        (hash, self.leaf(encoding, &hash))
    }
}

/// `entry_hash = BLAKE3(encoding)`.
pub fn entry_hash(encoding: &[u8]) -> Hash {
    *blake3::hash(encoding).as_bytes()
}

/// Splits 8 bytes off the front; callers have checked the length.
fn take_u64(bytes: &[u8]) -> (u64, &[u8]) {
    let (head, rest) = bytes.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(head);
    (u64::from_be_bytes(b), rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            index: 7,
            stream_sequence: 42,
            received_at: 1_795_000_000_123_456_789,
            previous_hash: [0xab; 32],
            event: br#"{"id":"x"}"#.to_vec(),
        }
    }

    #[test]
    fn encoding_is_byte_exact() {
        let bytes = sample().encode().unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 10);
        assert_eq!(&bytes[..26], b"gatehouse.ledger.entry.v1\0");
        assert_eq!(&bytes[26..34], &7u64.to_be_bytes());
        assert_eq!(&bytes[34..42], &42u64.to_be_bytes());
        assert_eq!(&bytes[42..50], &1_795_000_000_123_456_789i64.to_be_bytes());
        assert_eq!(&bytes[50..82], &[0xab; 32]);
        assert_eq!(&bytes[82..86], &10u32.to_be_bytes());
        assert_eq!(&bytes[86..], br#"{"id":"x"}"#);
    }

    /// Fixed vectors, computed independently (Python's `blake3` package over the encoding as
    /// `schemas/ledger.md` states it), so another verifier can check itself against ours.
    #[test]
    fn known_answers() {
        let first = Entry {
            index: 0,
            stream_sequence: 1,
            received_at: 0,
            previous_hash: GENESIS_HASH,
            event: b"{}".to_vec(),
        };
        let h0 = entry_hash(&first.encode().unwrap());
        assert_eq!(
            hex::encode(h0),
            "390557f9b0422c7969ab4e92c573caf0664706af5e23279299445b4fd49e1adf"
        );
        let second = Entry {
            index: 1,
            stream_sequence: 2,
            received_at: 1_795_000_000_000_000_000,
            previous_hash: h0,
            event: br#"{"a":1}"#.to_vec(),
        };
        assert_eq!(
            hex::encode(entry_hash(&second.encode().unwrap())),
            "04c83a9629073e518537e6d6379bc1927bc69736e7646af323e25af75bf6391c"
        );
    }

    #[test]
    fn borrowed_hashes_match_the_encoding() {
        let e = sample();
        let encoding = e.encode().unwrap();
        assert_eq!(
            e.as_ref().hashes(LedgerFormat::V1).unwrap(),
            (entry_hash(&encoding), crate::merkle::leaf_hash(&encoding))
        );
        assert_eq!(
            e.as_ref().hashes(LedgerFormat::V2).unwrap(),
            LedgerFormat::V2.hashes(&encoding)
        );
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(Entry::decode(&e.encode().unwrap()).unwrap(), e);
    }

    #[test]
    fn any_changed_byte_changes_the_hash() {
        let bytes = sample().encode().unwrap();
        let h = entry_hash(&bytes);
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            assert_ne!(entry_hash(&tampered), h, "byte {i}");
        }
    }

    #[test]
    fn malformed_encodings_are_refused() {
        assert_eq!(Entry::decode(b"short"), Err(DecodeError::TooShort(5)));
        let mut bytes = sample().encode().unwrap();
        bytes[0] = b'G';
        assert_eq!(Entry::decode(&bytes), Err(DecodeError::BadTag));
        let mut bytes = sample().encode().unwrap();
        bytes.push(b'!');
        assert_eq!(
            Entry::decode(&bytes),
            Err(DecodeError::LengthMismatch {
                declared: 10,
                actual: 11
            })
        );
    }
}
