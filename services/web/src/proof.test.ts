// Known answers of schemas/ledger.md and schemas/vectors (computed independently with
// Python's blake3 and cryptography): the browser's checks must agree with them byte for byte.
import { readFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { parse, stringify } from "lossless-json";
import {
  bytesToBase64,
  bytesToHex,
  checkEventProof,
  emptyRoot,
  entryEncoding,
  entryHash,
  type EntryFields,
  hexToBytes,
  keyId,
  leafHash,
  merkleRoot,
  nodeHash,
  otherSignatures,
  parseCheckpointText,
  parseNote,
  parseVerifierKey,
  rootFromInclusion,
  verifyConsistency,
  verifyNote,
  ED25519,
} from "./proof";
import { bigintOf, eventAnswerFromText, nanosToRfc3339 } from "./json";

const VECTORS = new URL("../../../schemas/vectors/", import.meta.url);
const read = (name: string) => readFileSync(new URL(name, VECTORS), "utf8");
// Exact integers: received_at is beyond 2^53.
const vector = (name: string) => parse(read(name)) as Record<string, any>;

const keys = vector("keys.json");
const checkpointVector = vector("checkpoint.json");
const bundle = vector("bundle.json");

const enc = new TextEncoder();
const zeros = new Uint8Array(32);

function entryOf(e: Record<string, any>): EntryFields {
  return {
    index: bigintOf(e.index, "index"),
    streamSequence: bigintOf(e.stream_sequence, "stream_sequence"),
    receivedAt: bigintOf(e.received_at, "received_at"),
    previousHash: hexToBytes(e.previous_hash),
    event: enc.encode(e.event),
  };
}

const A: EntryFields = { index: 0n, streamSequence: 1n, receivedAt: 0n, previousHash: zeros, event: enc.encode("{}") };
const hashA = entryHash(entryEncoding(A));
const B: EntryFields = {
  index: 1n,
  streamSequence: 2n,
  receivedAt: 1795000000000000000n,
  previousHash: hashA,
  event: enc.encode('{"a":1}'),
};
const hashB = entryHash(entryEncoding(B));
const C: EntryFields = {
  index: 2n,
  streamSequence: 3n,
  receivedAt: 1795000000000000001n,
  previousHash: hashB,
  event: enc.encode('{"b":2}'),
};

/** RFC 9162 PATH(m, D[n]), transcribed from ledger.md (test only). */
function path(m: number, leaves: Uint8Array[]): Uint8Array[] {
  if (leaves.length <= 1) return [];
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return m < k
    ? [...path(m, leaves.slice(0, k)), merkleRoot(leaves.slice(k))]
    : [...path(m - k, leaves.slice(k)), merkleRoot(leaves.slice(0, k))];
}

/** The members of the vector bundle's tar (ustar, bundle.md *The archive*). */
function bundleMembers(): Map<string, string> {
  const file = readFileSync(new URL("bundle.tar.gz", VECTORS));
  const tar = gunzipSync(file); // the seal after the gzip member is ignored by gunzip
  const out = new Map<string, string>();
  const dec = new TextDecoder();
  for (let at = 0; at + 512 <= tar.length; ) {
    const header = tar.subarray(at, at + 512);
    const name = dec.decode(header.subarray(0, 100)).replace(/\0.*$/s, "");
    if (!name) break;
    const size = parseInt(dec.decode(header.subarray(124, 135)), 8);
    out.set(name, dec.decode(tar.subarray(at + 512, at + 512 + size)));
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}

describe("entries (ledger.md, Known-answer vectors)", () => {
  it("hashes A and B", () => {
    expect(entryEncoding(A).length).toBe(88);
    expect(bytesToHex(hashA)).toBe("390557f9b0422c7969ab4e92c573caf0664706af5e23279299445b4fd49e1adf");
    expect(bytesToHex(hashB)).toBe("04c83a9629073e518537e6d6379bc1927bc69736e7646af323e25af75bf6391c");
    expect(bytesToHex(entryHash(entryEncoding(C)))).toBe(
      "5817d2bada6e2d14db9831933f3bd57aef5a5d16466ffd2df3ddbc1ade5dcaaa",
    );
  });

  it("hashes every entry of the vector bundle, with received_at exact", () => {
    expect(bundle.entries.length).toBe(8);
    for (const e of bundle.entries) {
      expect(bytesToHex(entryHash(entryEncoding(entryOf(e))))).toBe(e.entry_hash);
    }
  });

  it("refuses fields out of range", () => {
    expect(() => entryEncoding({ ...A, receivedAt: 1n << 63n })).toThrow();
    expect(() => entryEncoding({ ...A, index: -1n })).toThrow();
    expect(() => entryEncoding({ ...A, previousHash: new Uint8Array(31) })).toThrow();
  });
});

describe("Merkle tree (ledger.md, Vectors)", () => {
  const v1 = [A, B, C].map((e) => leafHash("gatehouse.ledger.v1", entryEncoding(e)));
  const v2 = [A, B, C].map((e) => leafHash("gatehouse.ledger.v2", entryEncoding(e)));

  it("computes v1 leaves and roots", () => {
    expect(v1.map(bytesToHex)).toEqual([
      "84dc7204356bf7675553977ae7aa7b4e5e72510f445448d9ee0d69dd7737a2ec",
      "17f56450f63775b38fc6f5e7de1a376eae7f56ebde7ee98929890fa710cf42b0",
      "fe773482d0d2eb506222f5dd056e5d611534fe98a333fbaa323fd85eeb14ebe9",
    ]);
    expect(bytesToHex(nodeHash(v1[0]!, v1[1]!))).toBe("7b580cc9670bb4a1737a9b443c4ca62458438035e46f85a6c3819ec1c8ddc0fc");
    expect(bytesToHex(merkleRoot(v1))).toBe("f0563e06dafc2401225a9f94c77ff10ef60b16082542ac8bbebdb5c73e23fb88");
    expect(bytesToHex(emptyRoot())).toBe("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
  });

  it("computes v2 leaves and roots", () => {
    expect(v2.map(bytesToHex)).toEqual([
      "3a3b1269503fc688be1142349be8fa7ac22f06335044b3357dfefaae1ca921e6",
      "6b2e059d9eb5e046f1db93a3f27f7bc8c5f59f7e4f62aca59b77e879d382f249",
      "e2b13ef71737d163f8b31dabbe51303f0d748405067b188f095155997b1ca1b9",
    ]);
    expect(bytesToHex(merkleRoot(v2.slice(0, 2)))).toBe("bbc3e66eff19dfcd5faadf66d5970e23d97f5b8be5d0a9c45619b74741bd7aa4");
    expect(bytesToHex(merkleRoot(v2))).toBe(checkpointVector.root_hex);
  });

  it("walks the documented inclusion proofs", () => {
    const root = merkleRoot(v2);
    expect(rootFromInclusion(0n, 3n, v2[0]!, [v2[1]!, v2[2]!])).toEqual(root);
    expect(rootFromInclusion(2n, 3n, v2[2]!, [merkleRoot(v2.slice(0, 2))])).toEqual(root);
    expect(rootFromInclusion(0n, 1n, v2[0]!, [])).toEqual(v2[0]);
  });

  it("walks every inclusion proof of every tree up to 70 leaves, and rejects wrong ones", () => {
    const leaves = Array.from({ length: 70 }, (_, i) => nodeHash(new Uint8Array(32).fill(i), zeros));
    for (let n = 1; n <= 70; n++) {
      const tree = leaves.slice(0, n);
      const root = merkleRoot(tree);
      for (let m = 0; m < n; m++) {
        const proof = path(m, tree);
        expect(rootFromInclusion(BigInt(m), BigInt(n), tree[m]!, proof)).toEqual(root);
        if (n > 1) {
          // Another index, a truncated or extended proof: never the root.
          const other = (m + 1) % n;
          let wrong: Uint8Array | null = null;
          try {
            wrong = rootFromInclusion(BigInt(other), BigInt(n), tree[m]!, proof);
          } catch {
            wrong = null;
          }
          if (wrong) expect(bytesToHex(wrong)).not.toBe(bytesToHex(root));
          expect(() => rootFromInclusion(BigInt(m), BigInt(n), tree[m]!, proof.slice(1))).toThrow();
          expect(() => rootFromInclusion(BigInt(m), BigInt(n), tree[m]!, [...proof, root])).toThrow();
        }
      }
    }
  });

  it("verifies the documented consistency proof from 2 to 3", () => {
    const root2 = merkleRoot(v2.slice(0, 2));
    const root3 = merkleRoot(v2);
    expect(verifyConsistency(2n, 3n, root2, root3, [v2[2]!])).toBe(true);
    expect(verifyConsistency(2n, 3n, root3, root3, [v2[2]!])).toBe(false);
    expect(verifyConsistency(3n, 3n, root3, root3, [])).toBe(true);
  });
});

describe("signed notes (bundle.md, checkpoint; vectors keys.json, checkpoint.json)", () => {
  const key = parseVerifierKey(keys.verifier_key);

  it("reads the verifier key and its id", () => {
    expect(key.name).toBe(keys.name);
    expect(key.type).toBe(ED25519);
    expect(bytesToHex(key.publicKey)).toBe(keys.public_key_hex);
    expect(bytesToHex(key.keyId)).toBe(keys.key_id_hex);
    expect(bytesToHex(keyId(keys.name, ED25519, hexToBytes(keys.public_key_hex)))).toBe(keys.key_id_hex);
    expect(() => parseVerifierKey(keys.verifier_key.replace("c41305ab", "c41305ac"))).toThrow(/key id/);
  });

  it("verifies the checkpoint vector and reads its size and root", () => {
    const check = verifyNote(checkpointVector.note, key);
    expect(check).toEqual({ ok: true, text: checkpointVector.text });
    const cp = parseCheckpointText(checkpointVector.text);
    expect(cp.origin).toBe(checkpointVector.origin);
    expect(cp.size).toBe(3n);
    expect(bytesToHex(cp.root)).toBe(checkpointVector.root_hex);
  });

  it("refuses a changed checkpoint, a changed signature, another key", () => {
    const changed = checkpointVector.note.replace("\n3\n", "\n4\n");
    expect(verifyNote(changed, key).ok).toBe(false);
    const lines = checkpointVector.note.split("\n");
    const sig = lines[4] as string;
    const flipped = sig.slice(0, -3) + (sig.at(-3) === "A" ? "B" : "A") + sig.slice(-2);
    expect(verifyNote(checkpointVector.note.replace(sig, flipped), key).ok).toBe(false);
    const other = parseVerifierKey(
      `other+${bytesToHex(keyId("other", ED25519, key.publicKey))}+${bytesToBase64(Uint8Array.of(1, ...key.publicKey))}`,
    );
    const result = verifyNote(checkpointVector.note, other);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.reason).toMatch(/no signature by key other/);
  });

  it("verifies the manifest signature vector (a note of another shape)", () => {
    const manifest = vector("manifest.json");
    expect(verifyNote(manifest.signature, key)).toEqual({ ok: true, text: manifest.note_text });
  });

  it("lists signature lines by other keys as cosignatures", () => {
    const stamp = new Uint8Array(76);
    stamp.set([1, 2, 3, 4]);
    stamp.set([0, 0, 0, 0, 0x69, 0x00, 0x00, 0x00], 4);
    const note = `${checkpointVector.note}\u2014 witness.example ${bytesToBase64(stamp)}\n`;
    expect(verifyNote(note, key).ok).toBe(true);
    expect(otherSignatures(note, key)).toEqual([
      { name: "witness.example", keyId: "01020304", timestamp: 0x69000000n },
    ]);
    expect(parseNote(note).signatures.length).toBe(2);
  });
});

describe("the vector bundle's checkpoint of 8 and its consistency proof from 3", () => {
  const members = bundleMembers();
  const key = parseVerifierKey(members.get("keys/checkpoint.vkey")!);
  const note = members.get("checkpoint")!;
  const leaves = bundle.entries.map((e: Record<string, any>) => leafHash("gatehouse.ledger.v2", entryEncoding(entryOf(e))));

  it("is signed by keys.json's key over the root of the 8 entries", () => {
    expect(key.name).toBe(keys.name);
    const check = verifyNote(note, key);
    expect(check.ok).toBe(true);
    const cp = parseCheckpointText(parseNote(note).text);
    expect(cp.size).toBe(8n);
    expect(bytesToHex(cp.root)).toBe(bytesToHex(merkleRoot(leaves)));
  });

  it("extends the checkpoint of 3 (checkpoint.json)", () => {
    const consistency = JSON.parse(members.get("consistency.json")!) as { old_size: number; old_root: string; proof: string[] };
    expect(consistency.old_size).toBe(3);
    expect(consistency.old_root).toBe(checkpointVector.root_hex);
    const cp = parseCheckpointText(parseNote(note).text);
    const proof = consistency.proof.map(hexToBytes);
    expect(verifyConsistency(3n, 8n, hexToBytes(consistency.old_root), cp.root, proof)).toBe(true);
    expect(verifyConsistency(3n, 8n, hexToBytes(consistency.old_root), cp.root, proof.slice(1))).toBe(false);
    expect(verifyConsistency(2n, 8n, hexToBytes(consistency.old_root), cp.root, proof)).toBe(false);
  });
});

describe("checkEventProof on an auditor API answer", () => {
  const members = bundleMembers();
  const note = members.get("checkpoint")!;
  const key = parseVerifierKey(keys.verifier_key);
  const leaves = bundle.entries.map((e: Record<string, any>) => leafHash("gatehouse.ledger.v2", entryEncoding(entryOf(e))));

  /** The answer the evidence service gives for entry `i` against the checkpoint of 8. */
  function answerText(i: number, change: (o: Record<string, unknown>) => void = () => {}): string {
    const e = bundle.entries[i];
    const encoding = entryEncoding(entryOf(e));
    const o: Record<string, unknown> = {
      index: e.index,
      stream_sequence: e.stream_sequence,
      received_at: e.received_at,
      previous_hash: e.previous_hash,
      entry_hash: e.entry_hash,
      leaf_hash: bytesToHex(leafHash("gatehouse.ledger.v2", encoding)),
      ledger_format: "gatehouse.ledger.v2",
      event: parse(e.event),
      event_base64: bytesToBase64(enc.encode(e.event)),
      pruned_at: null,
      size: 8,
      root: bytesToHex(merkleRoot(leaves)),
      inclusion: path(i, leaves).map(bytesToHex),
      checkpoint: note,
    };
    change(o);
    return stringify(o)!;
  }

  it("verifies every entry, received_at exact through the JSON", () => {
    for (let i = 0; i < 8; i++) {
      const { answer } = eventAnswerFromText(answerText(i));
      const report = checkEventProof(answer, key);
      expect(report.steps.map((s) => [s.name, s.status])).toEqual([
        ["Entry hash", "ok"],
        ["Leaf hash", "ok"],
        ["Inclusion proof", "ok"],
        ["Checkpoint", "ok"],
        ["Signature", "ok"],
      ]);
      expect(report.verified).toBe(true);
      expect(new TextDecoder().decode(report.event!)).toBe(bundle.entries[i].event);
    }
    expect(answerText(2)).toContain('"received_at":1795000000000000001');
  });

  it("says what failed", () => {
    const cases: [string, (o: Record<string, unknown>) => void, string][] = [
      ["Entry hash", (o) => (o.event_base64 = bytesToBase64(enc.encode('{"a":2}'))), "failed"],
      ["Entry hash", (o) => (o.received_at = parse("1795000000000000000")), "failed"],
      ["Leaf hash", (o) => (o.ledger_format = "gatehouse.ledger.v1"), "failed"],
      ["Inclusion proof", (o) => (o.inclusion = (o.inclusion as string[]).slice(1)), "failed"],
      ["Inclusion proof", (o) => (o.root = "00".repeat(32)), "failed"],
      ["Checkpoint", (o) => (o.checkpoint = null), "failed"],
      ["Checkpoint", (o) => (o.checkpoint = checkpointVector.note), "failed"],
      ["Signature", (o) => (o.checkpoint = note.replace(/ (\S)(\S*)\n$/, (_, c, r) => ` ${c === "A" ? "B" : "A"}${r}\n`)), "failed"],
    ];
    for (const [step, change, status] of cases) {
      const { answer } = eventAnswerFromText(answerText(2, change));
      const report = checkEventProof(answer, key);
      expect(report.verified, step).toBe(false);
      expect(report.steps.at(-1), step).toMatchObject({ name: step, status });
    }
  });

  it("without a key, checks everything but the signature and does not claim verification", () => {
    const { answer } = eventAnswerFromText(answerText(5));
    const report = checkEventProof(answer, null);
    expect(report.verified).toBe(false);
    expect(report.steps.at(-1)).toMatchObject({ name: "Signature", status: "skipped" });
  });

  it("a pruned entry is proven from its stored leaf", () => {
    const { answer } = eventAnswerFromText(
      answerText(4, (o) => {
        o.event = null;
        o.event_base64 = null;
        o.pruned_at = parse("1800000000000000123");
      }),
    );
    expect(answer.pruned_at).toBe(1800000000000000123n);
    const report = checkEventProof(answer, key);
    expect(report.steps.map((s) => s.status)).toEqual(["skipped", "ok", "ok", "ok"]);
    expect(report.verified).toBe(false);
  });

  it("formats nanoseconds exactly", () => {
    expect(nanosToRfc3339(1795000000000000001n)).toBe("2026-11-18T11:06:40.000000001Z");
  });
});
