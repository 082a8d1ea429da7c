//! What a listener enforces, as each service's YAML gives it (`connections:`), with the
//! defaults and the bounds checked at load.

use std::time::Duration;

use serde::Deserialize;

/// Timeouts and limits of one listener. Every field has a default, so `connections: {}` (or
/// no section at all) is the safe configuration.
///
/// ```yaml
/// connections:
///   header_read_timeout: 10s     # a request's headers must arrive within this
///   idle_timeout: 120s           # a connection with no request in flight is closed after this
///   tls_handshake_timeout: 10s
///   max_connections: 8192        # open at once, all clients together
///   max_connections_per_address: 512
///   http2:
///     max_concurrent_streams: 250
///     max_header_list_size: 32768
///     max_pending_accept_reset_streams: 20
///     max_local_error_reset_streams: 1024
///     keep_alive_interval: 30s
///     keep_alive_timeout: 20s
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// From the moment the listener waits for a request (a new connection, or an HTTP/1.1
    /// connection whose next request has begun to arrive) until its headers are complete.
    /// kube-apiserver allows 32s, nginx 60s; Gatehouse's clients are programs that send their
    /// headers at once, so 10s leaves a wide margin while bounding how long a slow sender
    /// holds a connection.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight. Longer than the 90s
    /// after which Go's transport (kubectl, client-go) and hyper's pool (kube-rs) drop an idle
    /// connection, so those clients close first and never reuse a connection the server has
    /// just closed. Watches, streamed responses and exec / attach / port-forward sessions are
    /// requests in flight: this never cuts them.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// From the TCP connection to the end of the TLS handshake (listeners with TLS only).
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// Connections open at once, from all clients; more are closed as soon as they are
    /// accepted. Upgraded connections (exec, attach, port-forward) count until they end.
    pub max_connections: usize,
    /// Connections open at once from one client address. Behind a load balancer that hides
    /// client addresses (SNAT), every client has the balancer's address: raise this to
    /// `max_connections` there.
    pub max_connections_per_address: usize,
    pub http2: Http2Limits,
}

/// HTTP/2 settings that bound what one connection may ask of the server.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Limits {
    /// Streams (requests) open at once on one connection; more are refused with
    /// `REFUSED_STREAM`. 250 is Go's default, which kube-apiserver uses: client-go carries
    /// every watch of a process on one connection, so less would refuse what the API server
    /// accepts.
    pub max_concurrent_streams: u32,
    /// Largest header block (decoded, in bytes) of one request. Bearer tokens with many
    /// groups run to a few KiB; nginx allows 32 KiB.
    pub max_header_list_size: u32,
    /// Streams the client opened and reset before the server saw them, at once (the HTTP/2
    /// "rapid reset" attack, CVE-2023-44487); past this the connection is closed.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server had to reset for the client's protocol errors before the
    /// connection is closed ("MadeYouReset", CVE-2025-8671).
    pub max_local_error_reset_streams: usize,
    /// How long a connection may go without a frame from the client before the server pings
    /// it; a client that does not answer within `keep_alive_timeout` is disconnected. This is
    /// what ends a watch whose client vanished without closing its connection.
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 8192,
            max_connections_per_address: 512,
            http2: Http2Limits::default(),
        }
    }
}

impl Default for Http2Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 250,
            max_header_list_size: 32 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

const SECOND: Duration = Duration::from_secs(1);
const FIVE_MINUTES: Duration = Duration::from_secs(300);
const HOUR: Duration = Duration::from_secs(3600);

impl ConnectionLimits {
    /// Refuses zero and absurd values, naming the setting as `key.field` (`key` is where the
    /// section sits in the service's configuration, e.g. `connections` or `api.connections`).
    pub fn validate(&self, key: &str) -> Result<(), String> {
        let h2 = &self.http2;
        let durations = [
            (
                "header_read_timeout",
                self.header_read_timeout,
                SECOND,
                FIVE_MINUTES,
            ),
            ("idle_timeout", self.idle_timeout, SECOND, HOUR),
            (
                "tls_handshake_timeout",
                self.tls_handshake_timeout,
                SECOND,
                FIVE_MINUTES,
            ),
            (
                "http2.keep_alive_interval",
                h2.keep_alive_interval,
                SECOND,
                HOUR,
            ),
            (
                "http2.keep_alive_timeout",
                h2.keep_alive_timeout,
                SECOND,
                FIVE_MINUTES,
            ),
        ];
        for (field, value, least, most) in durations {
            if !(least..=most).contains(&value) {
                return Err(format!(
                    "{key}.{field} must be between {} and {} (got {})",
                    humantime::format_duration(least),
                    humantime::format_duration(most),
                    humantime::format_duration(value),
                ));
            }
        }
        let counts = [
            ("max_connections", self.max_connections, 1, 1_000_000),
            // Above `max_connections` it is harmless (the total binds first), so lowering
            // `max_connections` alone stays valid.
            (
                "max_connections_per_address",
                self.max_connections_per_address,
                1,
                1_000_000,
            ),
            (
                "http2.max_concurrent_streams",
                h2.max_concurrent_streams as usize,
                1,
                10_000,
            ),
            (
                "http2.max_header_list_size",
                h2.max_header_list_size as usize,
                4 * 1024,
                1024 * 1024,
            ),
            (
                "http2.max_pending_accept_reset_streams",
                h2.max_pending_accept_reset_streams,
                1,
                10_000,
            ),
            (
                "http2.max_local_error_reset_streams",
                h2.max_local_error_reset_streams,
                1,
                100_000,
            ),
        ];
        for (field, value, least, most) in counts {
            if !(least..=most).contains(&value) {
                return Err(format!(
                    "{key}.{field} must be between {least} and {most} (got {value})"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ConnectionLimits, String> {
        let limits: ConnectionLimits = yaml_serde::from_str(yaml).map_err(|e| e.to_string())?;
        limits.validate("connections").map(|()| limits)
    }

    #[test]
    fn an_empty_section_is_the_defaults_and_they_validate() {
        assert_eq!(parse("{}").unwrap(), ConnectionLimits::default());
        let some =
            parse("header_read_timeout: 5s\nhttp2: {max_concurrent_streams: 100}\n").unwrap();
        assert_eq!(some.header_read_timeout, Duration::from_secs(5));
        assert_eq!(some.http2.max_concurrent_streams, 100);
        assert_eq!(some.idle_timeout, Duration::from_secs(120));
    }

    #[test]
    fn zero_absurd_and_unknown_values_are_refused_naming_the_setting() {
        let e = parse("header_read_timeout: 0s").unwrap_err();
        assert_eq!(
            e,
            "connections.header_read_timeout must be between 1s and 5m (got 0s)"
        );
        let e = parse("idle_timeout: 30days").unwrap_err();
        assert!(
            e.starts_with("connections.idle_timeout must be between 1s and 1h"),
            "{e}"
        );
        let e = parse("max_connections: 0").unwrap_err();
        assert!(e.starts_with("connections.max_connections must be"), "{e}");
        let e = parse("max_connections_per_address: 0").unwrap_err();
        assert_eq!(
            e,
            "connections.max_connections_per_address must be between 1 and 1000000 (got 0)"
        );
        // Lowering the total alone is fine: the total binds before the per-address limit.
        parse("max_connections: 10").unwrap();
        let e = parse("http2: {max_concurrent_streams: 0}").unwrap_err();
        assert!(e.contains("http2.max_concurrent_streams"), "{e}");
        let e = parse("http2: {max_header_list_size: 100}").unwrap_err();
        assert!(e.contains("http2.max_header_list_size"), "{e}");
        let e = parse("http2: {keep_alive_timeout: 0s}").unwrap_err();
        assert!(e.contains("http2.keep_alive_timeout"), "{e}");
        let e = parse("header_timeout: 5s").unwrap_err();
        assert!(e.contains("unknown field `header_timeout`"), "{e}");
        let limits = ConnectionLimits::default();
        let e = ConnectionLimits {
            tls_handshake_timeout: Duration::from_millis(10),
            ..limits
        }
        .validate("api.connections")
        .unwrap_err();
        assert!(
            e.starts_with("api.connections.tls_handshake_timeout"),
            "{e}"
        );
    }
}
