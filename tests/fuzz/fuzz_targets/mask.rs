//! The response masker (`gatehouse_proxy::mask::Masker`): bodies built from fuzzer-chosen Secret
//! values in every shape the API server answers with (an object, a list, a watch stream, a
//! `Table`, a `PartialObjectMetadataList`, a watch of tables, a kind-less or mislabelled
//! document), fed in fuzzer-chosen chunks, with a request that may suggest another shape.
//!
//! Invariants:
//! - no Secret value ever appears in the output (raw, JSON-escaped, or inside the
//!   last-applied annotation), however the body is split and whatever the request was;
//! - the output does not depend on where the body was split;
//! - arbitrary bytes never panic the masker, and split or whole it reaches the same verdict.
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use gatehouse_proxy::mask::{MaskTarget, Masker, Profile};
use libfuzzer_sys::arbitrary::{self, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Shape {
    Object,
    List,
    Watch,
    Table,
    MetadataList,
    TableWatch,
    /// A document whose `kind` claims something else than what its members hold.
    Mislabelled,
}

const SHAPES: [Shape; 7] = [
    Shape::Object,
    Shape::List,
    Shape::Watch,
    Shape::Table,
    Shape::MetadataList,
    Shape::TableWatch,
    Shape::Mislabelled,
];

#[derive(Debug)]
struct Case {
    shape: Shape,
    /// What the request was for: core secrets (every object a Secret) or something else.
    core_secrets: bool,
    values: Vec<String>,
    /// Where the body is cut (offsets are taken modulo its length).
    cuts: Vec<u16>,
    /// Whether each object carries its `kind` before or after `data`.
    kind_last: bool,
}

impl Case {
    fn read(u: &mut Unstructured<'_>) -> arbitrary::Result<Case> {
        let shape = *u.choose(&SHAPES)?;
        let core_secrets = u.arbitrary()?;
        let kind_last = u.arbitrary()?;
        let cuts = u.arbitrary()?;
        // Each value is marked, so finding it in the output can only mean it leaked.
        let values = (0..u.int_in_range(1..=4)?)
            .map(|i| Ok(format!("v4lue{i}:{}", u.arbitrary::<String>()?)))
            .collect::<arbitrary::Result<_>>()?;
        Ok(Case {
            shape,
            core_secrets,
            values,
            cuts,
            kind_last,
        })
    }
}

/// A Secret holding `values` as `data` (base64) and `stringData`, and once more in its
/// last-applied annotation.
fn secret(name: usize, values: &[String], kind: bool, kind_last: bool) -> Value {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: serde_json::Map<String, Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("k{i}"), Value::String(b64.encode(v))))
        .collect();
    let string_data: serde_json::Map<String, Value> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("s{i}"), Value::String(v.clone())))
        .collect();
    let applied = json!({"apiVersion": "v1", "kind": "Secret", "stringData": string_data});
    let mut text = String::from("{");
    if kind && !kind_last {
        text.push_str(r#""kind":"Secret","#);
    }
    text.push_str(&format!(
        r#""apiVersion":"v1","metadata":{{"name":"s{name}","annotations":{{"kubectl.kubernetes.io/last-applied-configuration":{}}}}},"data":{},"stringData":{}"#,
        Value::String(applied.to_string()),
        Value::Object(data),
        Value::Object(string_data),
    ));
    if kind && kind_last {
        text.push_str(r#","kind":"Secret""#);
    }
    text.push('}');
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn body(case: &Case) -> String {
    let values = &case.values;
    let one = |n| secret(n, values, true, case.kind_last);
    match case.shape {
        Shape::Object => one(0).to_string(),
        Shape::List => {
            // Typed lists' items carry no kind of their own.
            let items: Vec<Value> = (0..2).map(|n| secret(n, values, false, false)).collect();
            json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": items})
                .to_string()
        }
        Shape::Watch => (0..3)
            .map(|n| json!({"type": "ADDED", "object": one(n)}).to_string() + "\n")
            .collect(),
        Shape::Table => table(values, case.kind_last).to_string(),
        Shape::MetadataList => {
            let items: Vec<Value> = (0..2)
                .map(|n| {
                    let s = one(n);
                    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": s["metadata"]})
                })
                .collect();
            json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "items": items})
                .to_string()
        }
        Shape::TableWatch => {
            json!({"type": "MODIFIED", "object": table(values, case.kind_last)}).to_string() + "\n"
        }
        Shape::Mislabelled => {
            json!({"kind": "ConfigMap", "items": [secret(0, values, false, false)], "object": secret(1, values, false, false)})
                .to_string()
        }
    }
}

fn table(values: &[String], kind_last: bool) -> Value {
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": [],
        "rows": [{"cells": ["s0", "Opaque", 1, "1d"], "object": secret(0, values, true, kind_last)}],
    })
}

fn run(profile: Option<Arc<Profile>>, target: &MaskTarget, body: &[u8], cuts: &[usize]) -> Option<Vec<u8>> {
    let mut masker = Masker::new(profile, target);
    let mut out = BytesMut::new();
    let mut at = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        if cut < at {
            continue;
        }
        masker.push(&body[at..cut], &mut out).ok()?;
        at = cut;
    }
    masker.finish(&mut out).ok()?;
    Some(out.to_vec())
}

fn cuts_of(raw: &[u16], len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|c| usize::from(*c) % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

fuzz_target!(|data: &[u8]| {
    // Half the inputs are raw bytes: no panic, and one verdict however they are split.
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        let split = rest.len() / 2;
        let target = MaskTarget::new("secrets", "");
        let whole = run(None, &target, rest, &[]);
        let halves = run(None, &target, rest, &[split]);
        assert_eq!(whole, halves, "the verdict depends on the split");
        return;
    }
    let Ok(case) = Case::read(&mut Unstructured::new(rest)) else {
        return;
    };
    let body = body(&case);
    let target = MaskTarget::new(if case.core_secrets { "secrets" } else { "widgets" }, "");
    let cuts = cuts_of(&case.cuts, body.len());
    let whole = run(None, &target, body.as_bytes(), &[]).expect("a well-formed body masks");
    let split = run(None, &target, body.as_bytes(), &cuts).expect("split, it masks too");
    assert_eq!(whole, split, "the output depends on the split");
    let out = String::from_utf8_lossy(&whole);
    use base64::Engine as _;
    for value in &case.values {
        let escaped = Value::String(value.clone()).to_string();
        let escaped = &escaped[1..escaped.len() - 1];
        let twice = Value::String(escaped.to_owned()).to_string();
        let twice = &twice[1..twice.len() - 1];
        let b64 = base64::engine::general_purpose::STANDARD.encode(value);
        for form in [value.as_str(), escaped, twice, b64.as_str()] {
            assert!(!out.contains(form), "{:?} leaked in {:?}: {out}", value, case.shape);
        }
    }
});
