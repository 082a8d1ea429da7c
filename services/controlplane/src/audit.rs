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
}
