//! Proving that a chat callback really comes from the platform, before anything in it is read.
//!
//! - [`slack_v0`]: Slack signs `v0:{X-Slack-Request-Timestamp}:{raw body}` with HMAC-SHA256
//!   under the app's signing secret and sends `X-Slack-Signature: v0=<hex>`. A timestamp more
//!   than [`SLACK_WINDOW`] away from now is refused, so a captured callback cannot be replayed
//!   later; within the window, replays are made harmless by idempotent votes.
//! - [`discord_ed25519`]: Discord signs `{X-Signature-Timestamp}{raw body}` with the
//!   application's Ed25519 key and sends `X-Signature-Ed25519: <hex>`.
//!
//! Both compare in constant time and say only which check failed, never what was expected.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a Slack request timestamp may be from now (Slack's documented five minutes).
pub const SLACK_WINDOW: Duration = Duration::from_secs(5 * 60);

/// Why a callback was not accepted. The messages are safe to log and to answer with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallbackError {
    #[error("the request is not signed (missing {0})")]
    Unsigned(&'static str),
    #[error("the request timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("the request timestamp is more than five minutes from now (replayed or clock skew)")]
    Stale,
    #[error("the signature is not in the platform's format")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks a Slack interactivity or Events API request. `timestamp` and `signature` are the
/// `X-Slack-Request-Timestamp` and `X-Slack-Signature` header values; `body` the raw bytes
/// exactly as received. Returns the verified MAC: its bytes, not the header's text, are what
/// identifies the request for replay protection (hex is read in either case).
pub fn slack_v0(
    signing_secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Result<Vec<u8>, CallbackError> {
    let timestamp = timestamp.ok_or(CallbackError::Unsigned("X-Slack-Request-Timestamp"))?;
    let signature = signature.ok_or(CallbackError::Unsigned("X-Slack-Signature"))?;
    let sent: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| CallbackError::BadTimestamp)?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(sent) > SLACK_WINDOW.as_secs() {
        return Err(CallbackError::Stale);
    }
    let claimed = signature
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(CallbackError::Malformed)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(signing_secret).map_err(|_| CallbackError::Mismatch)?;
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&claimed)
        .map_err(|_| CallbackError::Mismatch)?;
    Ok(claimed)
}

/// Checks a Discord interaction. `timestamp` and `signature` are the `X-Signature-Timestamp`
/// and `X-Signature-Ed25519` header values; `body` the raw bytes exactly as received.
pub fn discord_ed25519(
    public_key: &VerifyingKey,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), CallbackError> {
    let timestamp = timestamp.ok_or(CallbackError::Unsigned("X-Signature-Timestamp"))?;
    let signature = signature.ok_or(CallbackError::Unsigned("X-Signature-Ed25519"))?;
    let bytes: [u8; 64] = hex::decode(signature.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(CallbackError::Malformed)?;
    let mut message = Vec::with_capacity(timestamp.len() + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.extend_from_slice(body);
    public_key
        .verify(&message, &Signature::from_bytes(&bytes))
        .map_err(|_| CallbackError::Mismatch)
}

/// Reads a Discord application's public key as the developer portal shows it (hex).
pub fn discord_public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("a Discord public key is 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    /// The worked example in Slack's "Verifying requests from Slack" documentation.
    const SLACK_SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TS: &str = "1531420618";
    const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn slacks_documented_example_verifies() {
        let now = at(1_531_420_618 + 60);
        assert_eq!(
            slack_v0(
                SLACK_SECRET,
                Some(SLACK_TS),
                Some(SLACK_SIG),
                SLACK_BODY.as_bytes(),
                now
            ),
            Ok(hex::decode(&SLACK_SIG[3..]).unwrap())
        );
        // The same signature in capitals verifies as the same MAC, so a replay key made from
        // it cannot be dodged by changing the case of the hex.
        assert_eq!(
            slack_v0(
                SLACK_SECRET,
                Some(SLACK_TS),
                Some(&format!("v0={}", SLACK_SIG[3..].to_uppercase())),
                SLACK_BODY.as_bytes(),
                now
            ),
            Ok(hex::decode(&SLACK_SIG[3..]).unwrap())
        );
    }

    #[test]
    fn slack_refuses_forgeries_replays_and_missing_headers() {
        let now = at(1_531_420_618);
        let body = SLACK_BODY.as_bytes();
        let mut tampered = body.to_vec();
        tampered[6] ^= 1;
        assert_eq!(
            slack_v0(
                SLACK_SECRET,
                Some(SLACK_TS),
                Some(SLACK_SIG),
                &tampered,
                now
            ),
            Err(CallbackError::Mismatch)
        );
        assert_eq!(
            slack_v0(
                b"another-secret",
                Some(SLACK_TS),
                Some(SLACK_SIG),
                body,
                now
            ),
            Err(CallbackError::Mismatch)
        );
        // The same, correctly signed request six minutes later is a replay.
        assert_eq!(
            slack_v0(
                SLACK_SECRET,
                Some(SLACK_TS),
                Some(SLACK_SIG),
                body,
                at(1_531_420_618 + 360)
            ),
            Err(CallbackError::Stale)
        );
        // A timestamp from the future is as suspect as one from the past.
        assert_eq!(
            slack_v0(
                SLACK_SECRET,
                Some(SLACK_TS),
                Some(SLACK_SIG),
                body,
                at(1_531_420_618 - 360)
            ),
            Err(CallbackError::Stale)
        );
        // Re-signing with another timestamp needs the secret.
        assert_eq!(
            slack_v0(SLACK_SECRET, Some("1531420619"), Some(SLACK_SIG), body, now),
            Err(CallbackError::Mismatch)
        );
        assert_eq!(
            slack_v0(SLACK_SECRET, None, Some(SLACK_SIG), body, now),
            Err(CallbackError::Unsigned("X-Slack-Request-Timestamp"))
        );
        assert_eq!(
            slack_v0(SLACK_SECRET, Some(SLACK_TS), None, body, now),
            Err(CallbackError::Unsigned("X-Slack-Signature"))
        );
        assert_eq!(
            slack_v0(SLACK_SECRET, Some("soon"), Some(SLACK_SIG), body, now),
            Err(CallbackError::BadTimestamp)
        );
        assert_eq!(
            slack_v0(SLACK_SECRET, Some(SLACK_TS), Some("v1=abcd"), body, now),
            Err(CallbackError::Malformed)
        );
    }

    #[test]
    fn discord_signatures_verify_and_tampering_does_not() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let public = discord_public_key(&hex::encode(key.verifying_key().as_bytes())).unwrap();
        let ts = "1732284000";
        let body = br#"{"type":3,"data":{"custom_id":"approve:01J"}}"#;
        let signed = |ts: &str, body: &[u8]| {
            let mut message = ts.as_bytes().to_vec();
            message.extend_from_slice(body);
            hex::encode(key.sign(&message).to_bytes())
        };
        let signature = signed(ts, body);
        assert_eq!(
            discord_ed25519(&public, Some(ts), Some(&signature), body),
            Ok(())
        );
        let mut tampered = body.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            discord_ed25519(&public, Some(ts), Some(&signature), &tampered),
            Err(CallbackError::Mismatch)
        );
        assert_eq!(
            discord_ed25519(&public, Some("1732284001"), Some(&signature), body),
            Err(CallbackError::Mismatch)
        );
        let other = SigningKey::from_bytes(&[8u8; 32]);
        let mut message = ts.as_bytes().to_vec();
        message.extend_from_slice(body);
        let forged = hex::encode(other.sign(&message).to_bytes());
        assert_eq!(
            discord_ed25519(&public, Some(ts), Some(&forged), body),
            Err(CallbackError::Mismatch)
        );
        assert_eq!(
            discord_ed25519(&public, Some(ts), Some("zz"), body),
            Err(CallbackError::Malformed)
        );
        assert_eq!(
            discord_ed25519(&public, None, Some(&signature), body),
            Err(CallbackError::Unsigned("X-Signature-Timestamp"))
        );
        assert!(discord_public_key("not hex").is_err());
    }
}
