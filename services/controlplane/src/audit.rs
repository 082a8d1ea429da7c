//! The apiserver's own audit log, read back: one `audit.k8s.io/v1` `Event` per line.
//! Gatehouse sends its request id as `Audit-ID`, so these join the ledger exactly.

use std::path::Path;

use serde::Deserialize;

use crate::ControlPlaneError;

/// The fields of an audit event that the cross-checks read.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: String,
    pub verb: String,
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    pub user: UserInfo,
    #[serde(default)]
    pub impersonated_user: Option<UserInfo>,
    #[serde(default)]
    pub object_ref: Option<ObjectRef>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    #[serde(default)]
    pub request_object: Option<serde_json::Value>,
    #[serde(default)]
    pub response_object: Option<serde_json::Value>,
    #[serde(default)]
    pub user_agent: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    #[serde(default)]
    pub resource: String,
    #[serde(default)]
    pub subresource: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub api_group: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: u16,
}

/// Every complete line of the log. The apiserver writes each event as one line; a line still
/// being written (no newline yet) is left for the next read.
pub fn read(path: &Path) -> Result<Vec<AuditEvent>, ControlPlaneError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ControlPlaneError::Io(
                format!("reading {}", path.display()),
                e,
            ));
        }
    };
    let complete = text.rsplit_once('\n').map_or("", |(lines, _)| lines);
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line).map_err(|e| {
                ControlPlaneError::Http(format!(
                    "{}: an audit event that does not parse: {e}",
                    path.display()
                ))
            })
        })
        .collect()
}

/// An event the API server's audit log backend could not write: the apiserver then prints it to
/// its own log as an `AUDIT: id="…" … user="…" as="…" … uri="…"` line (after `Error in audit
/// plugin 'log'`). Kubernetes 1.36 does so for a server-side apply whose YAML body it cannot
/// encode as the event's `requestObject`, so such a request is in the apiserver's log and not in
/// its audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnwrittenEvent {
    pub audit_id: String,
    pub stage: String,
    pub method: String,
    pub user: String,
    /// The impersonated user, `<self>` when there was none.
    pub impersonated_user: String,
    pub uri: String,
}

/// The `AUDIT:` lines of the API server's log (`logs/kube-apiserver.log`).
pub fn read_unwritten(apiserver_log: &Path) -> Result<Vec<UnwrittenEvent>, ControlPlaneError> {
    let text = match std::fs::read(apiserver_log) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ControlPlaneError::Io(
                format!("reading {}", apiserver_log.display()),
                e,
            ));
        }
    };
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(" AUDIT: ").map(|(_, fields)| fields))
        .filter_map(|fields| {
            let fields = quoted_fields(fields);
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            Some(UnwrittenEvent {
                audit_id: field("id")?,
                stage: field("stage").unwrap_or_default(),
                method: field("method").unwrap_or_default(),
                user: field("user").unwrap_or_default(),
                impersonated_user: field("as").unwrap_or_default(),
                uri: field("uri").unwrap_or_default(),
            })
        })
        .collect())
}

/// `key="value" key="value"`, values quoted as Go's `%q` quotes them.
fn quoted_fields(mut rest: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while let Some((key, after)) = rest.trim_start().split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        fields.push((key.to_owned(), value));
        rest = &after[end.min(after.len())..];
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_complete_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"01J","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/apps/pods","verb":"list","user":{"username":"system:serviceaccount:gatehouse:gatehouse-proxy","groups":["system:serviceaccounts"]},"impersonatedUser":{"username":"ci-deployer","groups":["deployers"]},"objectRef":{"resource":"pods","namespace":"apps","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200}}"#;
        std::fs::write(&path, format!("{line}\n{{\"kind\":\"Ev")).unwrap();
        let events = read(&path).unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.audit_id, "01J");
        assert_eq!(
            event.impersonated_user.as_ref().unwrap().username,
            "ci-deployer"
        );
        assert_eq!(event.object_ref.as_ref().unwrap().namespace, "apps");
        assert_eq!(event.response_status.as_ref().unwrap().code, 200);
        assert!(read(&dir.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn events_the_audit_log_could_not_take_are_read_from_the_apiservers_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kube-apiserver.log");
        let text = concat!(
            "E1208 01:49:01.036727    5105 metrics.go:110] Error in audit plugin 'log' affecting 1 audit events: json: error calling MarshalJSON for type *runtime.Unknown\n",
            r#"2026-12-08T02:00:40.532014876Z AUDIT: id="01M99P3B" stage="ResponseComplete" ip="127.0.0.1" method="patch" user="system:serviceaccount:gatehouse:gatehouse-proxy" groups="\"system:serviceaccounts\",\"system:authenticated\"" as="conformance-e2e" asgroups="\"system:authenticated\"" user-agent="e2e.test -- [sig-api-machinery] FieldValidation \"x\"" namespace="<none>" uri="/apis/g/v1/foos/a?fieldManager=m" response="500""#,
            "\nI1208 other line\n"
        );
        std::fs::write(&path, text).unwrap();
        let events = read_unwritten(&path).unwrap();
        assert_eq!(
            events,
            vec![UnwrittenEvent {
                audit_id: "01M99P3B".into(),
                stage: "ResponseComplete".into(),
                method: "patch".into(),
                user: "system:serviceaccount:gatehouse:gatehouse-proxy".into(),
                impersonated_user: "conformance-e2e".into(),
                uri: "/apis/g/v1/foos/a?fieldManager=m".into(),
            }]
        );
        assert!(
            read_unwritten(&dir.path().join("absent.log"))
                .unwrap()
                .is_empty()
        );
    }
}
