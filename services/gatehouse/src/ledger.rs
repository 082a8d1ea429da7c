//! `gatehouse ledger verify --data-dir DIR`.

use std::path::Path;

use gatehouse_evidence::verify::{self, Verified};
use gatehouse_evidence::{Ledger, LedgerError};
use serde_json::json;

/// What `ledger verify` found, for the exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyOutcome {
    Holds,
    Broken,
}

/// Opens the ledger read-only (safe while `gatehouse evidence` runs), walks it, prints a
/// summary (or JSON), and says whether the chain holds.
pub fn verify(data_dir: &Path, as_json: bool) -> anyhow::Result<VerifyOutcome> {
    let ledger = match Ledger::open_read_only(data_dir) {
        Ok(ledger) => ledger,
        // Nothing there: the wrong directory, not evidence that fails.
        Err(e @ LedgerError::Missing(_)) => return Err(e.into()),
        // A ledger whose files cannot even be opened (deleted, truncated, edited) does not verify.
        Err(e) => {
            if as_json {
                println!(
                    "{}",
                    json!({ "ok": false, "problem": format!("the ledger cannot be opened: {e}") })
                );
            } else {
                eprintln!("ledger verify: FAILED: the ledger cannot be opened");
                eprintln!("  {e}");
                eprintln!("  see runbooks/ledger-verify-failed.md");
            }
            return Ok(VerifyOutcome::Broken);
        }
    };
    let result = verify::verify(&ledger)?;
    let path = ledger.path().display().to_string();
    match result {
        Ok(verified) => {
            if as_json {
                println!("{}", report_json(&path, Some(&verified), None));
            } else {
                print_ok(&path, &verified);
            }
            Ok(VerifyOutcome::Holds)
        }
        Err(broken) => {
            if as_json {
                println!(
                    "{}",
                    report_json(&path, None, Some((broken.index, broken.to_string())))
                );
            } else {
                eprintln!("ledger verify: FAILED at entry {}", broken.index);
                eprintln!("  {broken}");
                eprintln!("  ledger {path}");
                eprintln!("  see runbooks/ledger-verify-failed.md");
            }
            Ok(VerifyOutcome::Broken)
        }
    }
}

fn print_ok(path: &str, v: &Verified) {
    println!("ledger verify: OK");
    println!("  ledger         {path}");
    println!("  format         {}", v.format.marker());
    println!("  entries        {}", v.entries);
    println!("  head hash      {}", hex::encode(v.head_hash));
    println!("  last sequence  {}", v.last_sequence);
    if v.pruned > 0 {
        println!(
            "  pruned         {} entries past retention (hashes kept)",
            v.pruned
        );
    }
    match v.merkle_root {
        Some(root) => println!("  merkle root    {}", hex::encode(root)),
        None => println!("  merkle root    not built yet (gatehouse evidence builds it at start)"),
    }
    if v.gaps.is_empty() {
        println!("  gaps           none");
    } else {
        for gap in &v.gaps {
            println!(
                "  gap alarm      stream sequences {}..={} were missing from the stream at ingest",
                gap.first, gap.last
            );
        }
    }
}

fn report_json(
    path: &str,
    ok: Option<&Verified>,
    broken: Option<(u64, String)>,
) -> serde_json::Value {
    match (ok, broken) {
        (Some(v), _) => json!({
            "ledger": path,
            "ok": true,
            "format": v.format.marker(),
            "entries": v.entries,
            "head_hash": hex::encode(v.head_hash),
            "last_sequence": v.last_sequence,
            "merkle_root": v.merkle_root.map(hex::encode),
            "pruned": v.pruned,
            "gaps": v.gaps.iter().map(|g| json!({"first": g.first, "last": g.last})).collect::<Vec<_>>(),
        }),
        (None, Some((index, problem))) => json!({
            "ledger": path,
            "ok": false,
            "first_bad_index": index,
            "problem": problem,
        }),
        (None, None) => json!({ "ledger": path, "ok": false }),
    }
}
