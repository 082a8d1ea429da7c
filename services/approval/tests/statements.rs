//! The known-answer vector in `schemas/vectors/grant-statement.json` (computed with Python,
//! independently of this code): a grant signed the way the approval service signs it is byte for
//! byte the vector's note, and a keyring holding the vector's verifier key opens it.

use gatehouse_events::{GRANT_STATEMENT, GrantIssued};
use gatehouse_proof::attest::{Keyring, sign};
use gatehouse_proof::checkpoint::NoteSigner;
use serde_json::Value;

fn vector() -> Value {
    serde_json::from_str(include_str!(
        "../../../schemas/vectors/grant-statement.json"
    ))
    .expect("the vector is JSON")
}

fn field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} missing"))
}

#[test]
fn a_grant_signs_to_the_vector_and_opens_with_its_verifier_key() {
    let v = vector();
    let seed: [u8; 32] = hex::decode(field(&v, "seed_hex"))
        .unwrap()
        .try_into()
        .unwrap();
    let signer = NoteSigner::from_seed(field(&v, "key_name"), seed).unwrap();
    assert_eq!(signer.to_skey(), field(&v, "private_key"));
    assert_eq!(signer.verifier().to_vkey(), field(&v, "verifier_key"));
    assert_eq!(hex::encode(signer.key_id()), field(&v, "key_id_hex"));
    assert_eq!(field(&v, "kind"), GRANT_STATEMENT);

    let grant: GrantIssued = serde_json::from_str(field(&v, "statement")).unwrap();
    assert_eq!(
        serde_json::to_string(&grant).unwrap(),
        field(&v, "statement")
    );
    assert_eq!(sign(&signer, GRANT_STATEMENT, &grant), field(&v, "note"));

    let ring = Keyring::parse(field(&v, "verifier_key")).unwrap();
    let opened = ring
        .open::<GrantIssued>(
            GRANT_STATEMENT,
            field(&v, "note"),
            std::time::SystemTime::now(),
        )
        .unwrap();
    assert_eq!(opened.statement, grant);
    assert_eq!(
        opened.key,
        format!("{}/{}", field(&v, "key_name"), field(&v, "key_id_hex"))
    );
}
