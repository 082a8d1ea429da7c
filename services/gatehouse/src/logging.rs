//! JSON log lines with every field at the top level, including the fields of the spans the
//! event happened in.
//!
//! Module map:
//! - [`FlatJson`]: the event formatter. tracing-subscriber's own JSON format nests span fields
//!   under `span` / `spans`; log pipelines want `request_id` as a top-level key on every line
//!   logged while a request is handled, whichever module logged it.
//! - [`json_subscriber`]: a subscriber writing [`FlatJson`] lines, used by `init_logging` and
//!   by tests with their own writer.
//!
//! A line: `{"timestamp":…,"level":"INFO","target":…,"span":"request","request_id":…,
//! <event fields>…,"message":…}`. Span fields come outermost first, so inner spans and then the
//! event's own fields win on a name clash.

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one JSON object, span and event fields flattened into it.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        let mut timestamp = String::new();
        if SystemTime
            .format_time(&mut Writer::new(&mut timestamp))
            .is_ok()
        {
            line.insert("timestamp".into(), Value::String(timestamp));
        }
        line.insert("level".into(), Value::String(meta.level().as_str().into()));
        line.insert("target".into(), Value::String(meta.target().into()));
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                innermost = Some(span.name());
                let extensions = span.extensions();
                // JsonFields keeps each span's fields as a JSON object in its extensions.
                if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>()
                    && let Ok(Value::Object(fields)) = serde_json::from_str(fields.as_str())
                {
                    line.extend(fields);
                }
            }
            if let Some(name) = innermost {
                line.insert("span".into(), Value::String(name.into()));
            }
        }
        event.record(&mut Fields(&mut line));
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        writer.write_str(&text)
    }
}

/// Collects an event's fields as JSON values.
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // NaN and infinities are not JSON numbers.
        let value = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.0.insert(field.name().into(), value);
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().into(), Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%x` fields arrive here wrapped so that Debug prints their Display form.
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

/// A subscriber writing [`FlatJson`] lines to `writer`, filtered by `filter`.
pub fn json_subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .fmt_fields(JsonFields::new())
        .event_format(FlatJson)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(captured: &Captured) -> Vec<Value> {
        String::from_utf8(captured.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn request_id_from_the_span_is_a_top_level_key() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = json_subscriber(EnvFilter::new("info"), move || sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            // As the proxy does it: the span opens empty, the pipeline fills in the id.
            let span = tracing::info_span!("request", request_id = tracing::field::Empty);
            span.record("request_id", "01J0REQUEST");
            span.in_scope(|| {
                tracing::warn!(issuer = %"https://issuer", status = 403u16, ok = false, "refreshing keys failed");
            });
            tracing::info!(elapsed_ms = 1.5, "outside any request");
            tracing::debug!("filtered out");
        });
        let lines = lines(&captured);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let inside = &lines[0];
        assert_eq!(inside["request_id"], "01J0REQUEST");
        assert_eq!(inside["span"], "request");
        assert_eq!(inside["level"], "WARN");
        assert_eq!(inside["message"], "refreshing keys failed");
        assert_eq!(inside["issuer"], "https://issuer");
        assert_eq!(inside["status"], 403);
        assert_eq!(inside["ok"], false);
        assert!(inside["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(inside["target"].as_str().unwrap().starts_with("gatehouse"));
        let outside = &lines[1];
        assert!(outside.get("request_id").is_none());
        assert!(outside.get("span").is_none());
        assert_eq!(outside["elapsed_ms"], 1.5);
    }

    #[test]
    fn event_fields_win_over_span_fields_and_inner_spans_over_outer() {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = json_subscriber(EnvFilter::new("info"), move || sink.clone());
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("connection", peer = "10.0.0.1:5000", who = "outer");
            let _outer = outer.enter();
            let inner = tracing::info_span!("request", request_id = "r1", who = "inner");
            let _inner = inner.enter();
            tracing::info!(who = "event", "hello");
        });
        let line = &lines(&captured)[0];
        assert_eq!(line["who"], "event");
        assert_eq!(line["peer"], "10.0.0.1:5000");
        assert_eq!(line["request_id"], "r1");
        assert_eq!(line["span"], "request");
    }
}
