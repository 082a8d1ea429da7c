//! One bad bundle per rule of `schemas/bundle.md` (*Verifying a bundle*), and more for the
//! rules with several parts: each must fail verification naming that rule. Most are made by
//! someone who holds the bundle *and* the checkpoint key, who rebuilds the manifest, its
//! signature and the seal, so that only the rule under test can catch them.

mod common;

use std::io::Write;

use common::*;
use gatehouse_proof::bundle::{Options, verify_with};
use gatehouse_proof::checkpoint::{Checkpoint, NoteSigner};

/// A good bundle's members: 9 entries, all of them, a session, a consistency proof from 4.
fn good() -> Vec<Member> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.tar.gz");
    write_bundle(
        &path,
        &Spec {
            since: Some(4),
            // Entries 1 to 8 of 12: tree.jsonl gives leaf 0 and the subtrees after 8.
            ..Spec::new(12, 1..9)
        },
    );
    read_members(&std::fs::read(&path).unwrap())
}

/// The good bundle changed by `change`, then re-signed and re-sealed with the real key.
fn changed(change: impl FnOnce(&mut Vec<Member>)) -> Vec<u8> {
    let mut members = good();
    change(&mut members);
    resign(&mut members, &signer(), |_| {});
    pack(&members)
}

/// The good bundle with its manifest edited, re-signed and re-sealed.
fn manifest_edited(edit: impl FnOnce(&mut gatehouse_proof::bundle::Manifest)) -> Vec<u8> {
    let mut members = good();
    resign(&mut members, &signer(), edit);
    pack(&members)
}

fn lines(data: &[u8]) -> Vec<Vec<u8>> {
    data.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn gzip(data: &[u8], mtime: u32) -> Vec<u8> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(mtime)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

struct Case {
    rule: u8,
    what: &'static str,
    bundle: Vec<u8>,
    trusted: Option<String>,
}

fn case(rule: u8, what: &'static str, bundle: Vec<u8>) -> Case {
    Case {
        rule,
        what,
        bundle,
        trusted: None,
    }
}

fn cases() -> Vec<Case> {
    let good_bundle = pack(&good());
    let mut cases = vec![];

    // 1. The seal.
    let mut cut = good_bundle.clone();
    cut.truncate(cut.len() - 1);
    cases.push(case(1, "the last byte cut", cut));
    let mut body_changed = good_bundle.clone();
    body_changed[20] ^= 1;
    cases.push(case(1, "a byte of the archive changed", body_changed));

    // 2. The gzip member.
    let tar_bytes = tar(&good());
    cases.push(case(
        2,
        "a gzip header with a time",
        sealed(gzip(&tar_bytes, 7)),
    ));
    let mut two = gzip(&tar_bytes, 0);
    two.extend_from_slice(&gzip(b"", 0));
    cases.push(case(2, "a second gzip member before the seal", sealed(two)));
    let mut crc = gzip(&tar_bytes, 0);
    let at = crc.len() - 8;
    crc[at] ^= 1;
    cases.push(case(2, "a wrong CRC-32", sealed(crc)));

    // 3. Tar headers and the archive's end.
    for (what, set) in [
        (
            "mode 0600",
            (|h: &mut tar::Header| h.set_mode(0o600)) as fn(&mut tar::Header),
        ),
        ("uid 1", |h| h.set_uid(1)),
        ("gid 1", |h| h.set_gid(1)),
        ("mtime 1", |h| h.set_mtime(1)),
        ("a user name", |h| h.set_username("root").unwrap()),
        ("a directory", |h| {
            h.set_entry_type(tar::EntryType::Directory)
        }),
        ("a symlink", |h| h.set_entry_type(tar::EntryType::Symlink)),
        ("a GNU header", |h| {
            let old = h.clone();
            *h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            h.set_entry_type(old.entry_type());
        }),
    ] {
        let mut members = good();
        set(&mut member(&mut members, "events.jsonl").header);
        resign(&mut members, &signer(), |_| {});
        cases.push(case(3, what, pack(&members)));
    }
    let mut more = tar(&good());
    more.extend_from_slice(&[0u8; 512]);
    cases.push(case(
        3,
        "three zero blocks at the end",
        sealed(gzip(&more, 0)),
    ));
    let mut junk = tar(&good());
    let at = junk.len() - 1;
    junk[at] = 1;
    cases.push(case(3, "a byte in the end blocks", sealed(gzip(&junk, 0))));

    // 4. Members: set, names, order.
    cases.push(case(4, "events before entries", changed(|m| m.swap(7, 8))));
    cases.push(case(
        4,
        "a recording before the events",
        changed(|m| m.swap(8, 9)),
    ));
    cases.push(case(
        4,
        "the manifest last, as in v1",
        changed(|m| {
            let manifest = m.remove(3);
            m.push(manifest);
        }),
    ));
    cases.push(case(
        4,
        "a v1 proofs.jsonl",
        changed(|m| m.insert(8, Member::new("proofs.jsonl", b"".to_vec()))),
    ));
    cases.push(case(
        4,
        "INDEX.md removed",
        changed(|m| m.retain(|m| m.name != "INDEX.md")),
    ));
    cases.push(case(
        4,
        "keys/checkpoint.vkey removed",
        changed(|m| m.retain(|m| m.name != "keys/checkpoint.vkey")),
    ));
    cases.push(case(
        4,
        "manifest.sig removed",
        pack(&{
            let mut m = good();
            m.retain(|m| m.name != "manifest.sig");
            m
        }),
    ));
    cases.push(case(
        4,
        "another key file",
        changed(|m| m.insert(3, Member::new("keys/other.vkey", b"x\n".to_vec()))),
    ));
    cases.push(case(
        4,
        "a path with ..",
        changed(|m| m.insert(6, Member::new("recordings/../x.cast", b"x".to_vec()))),
    ));
    cases.push(case(
        4,
        "a member twice",
        changed(|m| {
            let again = m[5].clone();
            m.insert(5, again);
        }),
    ));

    // 5. The manifest.
    cases.push(case(
        5,
        "created_at not RFC 3339",
        manifest_edited(|m| m.created_at = "22/11/2026".into()),
    ));
    cases.push(case(
        5,
        "created_at not UTC",
        manifest_edited(|m| m.created_at = "2026-11-22T17:00:00+01:00".into()),
    ));
    cases.push(case(
        5,
        "range.to not a time",
        manifest_edited(|m| m.range.to = Some("soon".into())),
    ));
    cases.push(case(
        5,
        "upper-case hex in files",
        manifest_edited(|m| {
            let d = m.files.get_mut("events.jsonl").unwrap();
            d.blake3 = d.blake3.to_uppercase();
        }),
    ));
    cases.push(case(
        5,
        "a file's digest wrong",
        manifest_edited(|m| m.files.get_mut("INDEX.md").unwrap().bytes += 1),
    ));
    cases.push(case(
        5,
        "filters changed, contiguous kept",
        manifest_edited(|m| {
            m.filters.insert("principal".into(), "someone".into());
        }),
    ));
    cases.push(case(
        5,
        "an unknown filter",
        manifest_edited(|m| {
            m.contiguous = false;
            m.filters.insert("colour".into(), "blue".into());
        }),
    ));
    cases.push(case(
        5,
        "counts.sessions wrong",
        manifest_edited(|m| m.counts.sessions = 2),
    ));
    cases.push(case(
        5,
        "another format",
        manifest_edited(|m| m.format = "gatehouse.bundle.v3".into()),
    ));
    let mut members = good();
    let json = &mut member(&mut members, "manifest.json").data;
    let text = String::from_utf8(json.clone()).unwrap();
    *json = text.replacen('{', "{\"extra\":1,", 1).into_bytes();
    sign_manifest(&mut members, &signer());
    cases.push(case(5, "an unknown manifest member", pack(&members)));

    // 6. The manifest's signature: the manifest changed by someone without the key.
    let mut members = good();
    resign(&mut members, &other_signer(), |m| {
        m.contiguous = false;
        m.filters.insert("principal".into(), "someone".into());
    });
    cases.push(case(6, "signed by another key", pack(&members)));
    let mut members = good();
    let original_sig = member(&mut members, "manifest.sig").data.clone();
    resign(&mut members, &signer(), |m| m.counts.tombstones = 0);
    let mut edited = members.clone();
    member(&mut edited, "manifest.json")
        .data
        .extend_from_slice(b" ");
    member(&mut edited, "manifest.sig").data = original_sig;
    cases.push(case(6, "a signature over another manifest", pack(&edited)));
    let mut members = good();
    let note = member(&mut members, "checkpoint").data.clone();
    member(&mut members, "manifest.sig").data = note;
    cases.push(case(
        6,
        "a signed checkpoint in place of the signature",
        pack(&members),
    ));

    // 7. The checkpoint and the key file.
    cases.push(case(
        7,
        "keys/checkpoint.vkey replaced",
        changed(|m| {
            member(m, "keys/checkpoint.vkey").data =
                format!("{}\n", other_signer().verifier().to_vkey()).into_bytes();
        }),
    ));
    cases.push(case(
        7,
        "keys/checkpoint.vkey with two lines",
        changed(|m| {
            member(m, "keys/checkpoint.vkey")
                .data
                .extend_from_slice(b"x\n")
        }),
    ));
    cases.push(case(
        7,
        "the manifest names another checkpoint",
        manifest_edited(|m| m.checkpoint.size = 8),
    ));
    cases.push(case(
        7,
        "a checkpoint signed by another key",
        changed(|m| {
            let c = Checkpoint::from_note_unverified(
                &String::from_utf8(member(m, "checkpoint").data.clone()).unwrap(),
            )
            .unwrap();
            member(m, "checkpoint").data = other_signer().sign(&c).into_bytes();
        }),
    ));

    // 8. Events and proofs.
    let drop_line = |members: &mut Vec<Member>, k: usize| {
        for name in ["events.jsonl", "entries.jsonl"] {
            let mut l = lines(&member(members, name).data);
            l.remove(k);
            member(members, name).data = l.concat();
        }
    };
    let mut members = good();
    drop_line(&mut members, 6);
    resign(&mut members, &signer(), |m| m.counts.events = 7);
    cases.push(case(
        8,
        "an entry dropped from a contiguous bundle",
        pack(&members),
    ));
    cases.push(case(
        8,
        "an event changed",
        changed(|m| {
            let events = &mut member(m, "events.jsonl").data;
            let at = events.iter().position(|&b| b == b'r').unwrap();
            events[at] = b's';
        }),
    ));
    cases.push(case(
        8,
        "upper-case hex in entries.jsonl",
        changed(|m| {
            let mut l = lines(&member(m, "entries.jsonl").data);
            let text = String::from_utf8(l[1].clone()).unwrap();
            let hash = text.split('"').nth(9).unwrap().to_owned();
            l[1] = text.replace(&hash, &hash.to_uppercase()).into_bytes();
            member(m, "entries.jsonl").data = l.concat();
        }),
    ));
    cases.push(case(
        8,
        "a subtree of tree.jsonl changed",
        changed(|m| {
            let tree = &mut member(m, "tree.jsonl").data;
            let at = tree.len() - 3;
            tree[at] = if tree[at] == b'0' { b'1' } else { b'0' };
        }),
    ));
    cases.push(case(
        8,
        "a line of tree.jsonl removed",
        changed(|m| {
            let mut l = lines(&member(m, "tree.jsonl").data);
            l.pop();
            member(m, "tree.jsonl").data = l.concat();
        }),
    ));
    cases.push(case(
        8,
        "a line added to tree.jsonl",
        changed(|m| {
            let mut l = lines(&member(m, "tree.jsonl").data);
            l.push(l[0].clone());
            member(m, "tree.jsonl").data = l.concat();
        }),
    ));
    cases.push(case(
        8,
        "tree.jsonl names another subtree",
        changed(|m| {
            let mut l = lines(&member(m, "tree.jsonl").data);
            l[0] = String::from_utf8(l[0].clone())
                .unwrap()
                .replace("\"size\":1,", "\"size\":2,")
                .into_bytes();
            member(m, "tree.jsonl").data = l.concat();
        }),
    ));
    cases.push(case(
        5,
        "no ledger_format",
        manifest_edited(|m| m.ledger_format = None),
    ));
    cases.push(case(
        8,
        "counts.events wrong",
        manifest_edited(|m| m.counts.events = 10),
    ));
    cases.push(case(
        8,
        "range wrong",
        manifest_edited(|m| m.range.first_index = Some(2)),
    ));

    // 9. Tombstones.
    cases.push(case(
        9,
        "a tombstone for an entry the bundle holds",
        changed(|m| {
            let line = format!("{{\"index\":3,\"leaf_hash\":\"{}\"}}\n", "ab".repeat(32));
            member(m, "tombstones.jsonl").data = line.into_bytes();
        }),
    ));
    cases.push(case(
        9,
        "a v1 tombstone line (with an inclusion proof)",
        changed(|m| {
            let line = format!(
                "{{\"index\":0,\"leaf_hash\":\"{}\",\"inclusion\":[]}}\n",
                "ab".repeat(32)
            );
            member(m, "tombstones.jsonl").data = line.into_bytes();
        }),
    ));

    // 10. Recordings.
    cases.push(case(
        10,
        "a recording edited",
        changed(|m| {
            member(m, "recordings/01SESSION.cast")
                .data
                .extend_from_slice(b"[1.0,\"o\",\"x\"]\n")
        }),
    ));
    let mut members = good();
    members.retain(|m| !m.name.starts_with("recordings/"));
    resign(&mut members, &signer(), |m| m.counts.sessions = 0);
    cases.push(case(10, "a session's recording missing", pack(&members)));
    let mut members = good();
    let cast = member(&mut members, "recordings/01SESSION.cast").clone();
    members.insert(
        10,
        Member {
            name: "recordings/02OTHER.cast".into(),
            ..cast
        },
    );
    resign(&mut members, &signer(), |m| m.counts.sessions = 2);
    cases.push(case(
        10,
        "a recording of a session not in the bundle",
        pack(&members),
    ));

    // 11. The consistency proof.
    cases.push(case(
        11,
        "a consistency proof from another root",
        changed(|m| {
            let text = String::from_utf8(member(m, "consistency.json").data.clone()).unwrap();
            let root = text.split('"').nth(5).unwrap().to_owned();
            member(m, "consistency.json").data = text.replace(&root, &"0".repeat(64)).into_bytes();
        }),
    ));

    // 12. A trusted checkpoint the bundle does not extend.
    let trusted = |rule: u8, what: &'static str, bundle: Vec<u8>, note: String| Case {
        rule,
        what,
        bundle,
        trusted: Some(note),
    };
    cases.push(trusted(
        12,
        "trusted is newer",
        good_bundle.clone(),
        checkpoint_note(13),
    ));
    cases.push(trusted(
        12,
        "trusted at a size without a proof",
        good_bundle.clone(),
        checkpoint_note(5),
    ));
    let forged = signer().sign(&Checkpoint {
        origin: ORIGIN.into(),
        size: 4,
        root: [7; 32],
    });
    cases.push(trusted(
        12,
        "trusted with another root",
        good_bundle.clone(),
        forged,
    ));
    let elsewhere = NoteSigner::from_seed("elsewhere.example.com/log", [3; 32]).unwrap();
    let mut c = Checkpoint::from_note_unverified(&checkpoint_note(4)).unwrap();
    c.origin = "elsewhere.example.com/log".into();
    cases.push(trusted(
        12,
        "trusted of another log",
        good_bundle.clone(),
        elsewhere.sign(&c),
    ));
    let no_proof = changed(|m| m.retain(|m| m.name != "consistency.json"));
    cases.push(trusted(
        12,
        "no consistency proof",
        no_proof,
        checkpoint_note(4),
    ));
    cases
}

#[test]
fn each_rule_has_a_bundle_that_fails_it_and_the_failure_names_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let key = signer().verifier();
    // The good bundle passes, with and without the trusted checkpoint it extends.
    let path = dir.path().join("good.tar.gz");
    std::fs::write(&path, pack(&good())).unwrap();
    let note = checkpoint_note(4);
    let ok = verify_with(
        &path,
        Options {
            key: Some(&key),
            trusted: Some(&note),
            ..Options::default()
        },
        |_| {},
    )
    .unwrap();
    assert_eq!(ok.trusted.map(|t| t.size), Some(4));
    assert_eq!(ok.extends.map(|e| e.0), Some(4));
    let same = checkpoint_note(12);
    assert!(
        verify_with(
            &path,
            Options {
                key: Some(&key),
                trusted: Some(&same),
                ..Options::default()
            },
            |_| {}
        )
        .is_ok(),
        "a bundle extends the checkpoint it is against"
    );

    let cases = cases();
    let mut covered = std::collections::BTreeSet::new();
    for (n, case) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case-{n}.tar.gz"));
        std::fs::write(&path, &case.bundle).unwrap();
        let options = Options {
            key: Some(&key),
            trusted: case.trusted.as_deref(),
            ..Options::default()
        };
        let failures = match verify_with(&path, options, |_| {}) {
            Ok(_) => panic!("rule {}: {}: verified", case.rule, case.what),
            Err(f) => f,
        };
        let prefix = format!("rule {} (", case.rule);
        assert!(
            failures.iter().any(|f| f.starts_with(&prefix)),
            "rule {}: {}: failed otherwise: {failures:?}",
            case.rule,
            case.what
        );
        assert!(
            failures.iter().all(|f| f.starts_with("rule ")),
            "{failures:?}"
        );
        eprintln!("{}: {}: {:?}", case.rule, case.what, failures);
        covered.insert(case.rule);
    }
    assert_eq!(covered, (1..=12).collect(), "every rule has a case");
}
