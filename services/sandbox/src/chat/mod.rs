//! Local fakes of the chat platforms' HTTP APIs, for tests only: they record what was posted
//! and sign callbacks exactly as the real platforms do, so the approval service's real
//! verification code is what the tests exercise.
//!
//! - [`slack`]: the Slack Web API (`chat.postMessage`, `chat.update`, `chat.postEphemeral`)
//!   and signed interactivity / Events API deliveries.
//! - [`teams`]: the Bot Framework connector, its token endpoint, OpenID metadata and JWKS, and
//!   invoke activities carrying a Bot Framework JWT.
//! - [`discord`]: the Discord HTTP API (messages) and Ed25519-signed interactions.

pub mod discord;
pub mod slack;
pub mod teams;

/// Waits until `check` finds what a test is after in what a fake recorded, waking whenever the
/// fake records something (`changed` is notified with `notify_waiters`), for at most `timeout`.
/// The last look is `check`'s answer then.
pub(crate) async fn wait_until<T>(
    changed: &tokio::sync::Notify,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Registered before looking, so a change between the look and the wait is not lost.
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(found) = check() {
            return Some(found);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return check();
        }
    }
}
