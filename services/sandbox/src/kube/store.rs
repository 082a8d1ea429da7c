//! The in-memory object store: one global, monotonically increasing resourceVersion, a bounded
//! change history (so watches can resume from a resourceVersion) and a broadcast of changes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::status::ApiError;

/// (resource, namespace, name); namespace is "" for cluster-scoped objects.
pub type Key = (&'static str, String, String);

const HISTORY: usize = 10_000;
const BROADCAST: usize = 4_096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeType {
    Added,
    Modified,
    Deleted,
}

#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: &'static str,
    pub kind: ChangeType,
    /// The object after the change (for DELETED: its last state, with the deletion's RV).
    pub object: Value,
    /// The object before a modification, so selector watches can tell enter/leave.
    pub old: Option<Value>,
}

pub struct Store {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<Change>>,
    /// Highest resourceVersion whose change is no longer in `history`.
    compacted: u64,
    tx: broadcast::Sender<Arc<Change>>,
    counter: u32,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj["metadata"][field].as_str().unwrap_or_default()
}

impl Store {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(BROADCAST);
        Self {
            objects: BTreeMap::new(),
            // Start above 0: "0" means "any version" to clients.
            rv: 1000,
            history: VecDeque::new(),
            compacted: 1000,
            tx,
            counter: 0,
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// A small per-store counter for allocating pod and service IPs.
    pub fn next_counter(&mut self) -> u32 {
        self.counter = self.counter.wrapping_add(1);
        self.counter
    }

    pub fn get(&self, resource: &'static str, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
    }

    /// Objects of one resource, in key order, optionally in one namespace.
    pub fn list<'a>(
        &'a self,
        resource: &'static str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        let start = (
            resource,
            namespace.unwrap_or_default().to_owned(),
            String::new(),
        );
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.0 == resource && namespace.is_none_or(|ns| k.1 == ns))
    }

    fn bump(&mut self, obj: &mut Value) -> u64 {
        self.rv += 1;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), json!(self.rv.to_string()));
        }
        self.rv
    }

    fn publish(&mut self, change: Change) {
        let change = Arc::new(change);
        if self.history.len() >= HISTORY
            && let Some(old) = self.history.pop_front()
        {
            self.compacted = old.rv;
        }
        self.history.push_back(change.clone());
        // No receivers is fine.
        let _ = self.tx.send(change);
    }

    fn key(resource: &'static str, obj: &Value) -> Key {
        (
            resource,
            meta_str(obj, "namespace").to_owned(),
            meta_str(obj, "name").to_owned(),
        )
    }

    /// Stores a new object (caller checked it does not exist) and returns it with its RV.
    pub fn insert(&mut self, resource: &'static str, mut obj: Value) -> Value {
        let rv = self.bump(&mut obj);
        self.objects.insert(Self::key(resource, &obj), obj.clone());
        self.publish(Change {
            rv,
            resource,
            kind: ChangeType::Added,
            object: obj.clone(),
            old: None,
        });
        obj
    }

    /// Replaces an existing object and returns it with its new RV.
    pub fn replace(&mut self, resource: &'static str, mut obj: Value) -> Value {
        let rv = self.bump(&mut obj);
        let old = self.objects.insert(Self::key(resource, &obj), obj.clone());
        self.publish(Change {
            rv,
            resource,
            kind: ChangeType::Modified,
            object: obj.clone(),
            old,
        });
        obj
    }

    pub fn remove(&mut self, resource: &'static str, namespace: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .remove(&(resource, namespace.to_owned(), name.to_owned()))?;
        let rv = self.bump(&mut obj);
        self.publish(Change {
            rv,
            resource,
            kind: ChangeType::Deleted,
            object: obj.clone(),
            old: None,
        });
        Some(obj)
    }

    /// Keys of every namespaced object in `namespace`, for namespace deletion.
    pub fn keys_in_namespace(&self, namespace: &str) -> Vec<Key> {
        self.objects
            .keys()
            .filter(|k| k.1 == namespace)
            .cloned()
            .collect()
    }

    /// Subscribe first, under the same lock as `changes_since`, so nothing falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.tx.subscribe()
    }

    /// Changes with rv > `since`, or 410 Expired if they are no longer all in the history.
    pub fn changes_since(&self, since: u64) -> Result<Vec<Arc<Change>>, ApiError> {
        if since < self.compacted {
            return Err(ApiError::gone(format!(
                "too old resource version: {since} ({})",
                self.compacted + 1
            )));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.rv > since)
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(ns: &str, name: &str) -> Value {
        json!({"metadata": {"namespace": ns, "name": name}})
    }

    #[test]
    fn versions_increase_and_history_replays() {
        let mut s = Store::new();
        let start = s.current_rv();
        let a = s.insert("pods", obj("a", "x"));
        let b = s.insert("pods", obj("b", "y"));
        s.insert("configmaps", obj("a", "z"));
        let a_rv: u64 = a["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let b_rv: u64 = b["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(start < a_rv && a_rv < b_rv);
        let pods_a: Vec<_> = s
            .list("pods", Some("a"))
            .map(|(k, _)| k.2.clone())
            .collect();
        assert_eq!(pods_a, vec!["x"]);
        assert_eq!(s.list("pods", None).count(), 2);
        let since = s.changes_since(a_rv).unwrap();
        assert_eq!(since.len(), 2);
        assert_eq!(since[0].rv, b_rv);
        s.remove("pods", "a", "x").unwrap();
        let last = s.changes_since(s.current_rv() - 1).unwrap();
        assert_eq!(last[0].kind, ChangeType::Deleted);
        assert!(s.get("pods", "a", "x").is_none());
    }

    #[test]
    fn compacted_history_is_gone() {
        let mut s = Store::new();
        for i in 0..(HISTORY + 5) {
            s.insert("configmaps", obj("a", &format!("c{i}")));
        }
        assert_eq!(s.changes_since(1000).unwrap_err().code, 410);
        assert!(s.changes_since(s.current_rv() - 10).is_ok());
    }
}
