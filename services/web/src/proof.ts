// Browser-side checks of the ledger's proofs (schemas/ledger.md, schemas/bundle.md): the entry
// hash, the Merkle leaf (format v1 or v2), the RFC 9162 inclusion and consistency proofs with
// BLAKE3, and the C2SP signed note of the checkpoint with Ed25519. Pure functions, so the
// known-answer vectors of schemas/vectors test them under Vitest.
import { blake3 } from "@noble/hashes/blake3.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex, concatBytes, hexToBytes, utf8ToBytes } from "@noble/hashes/utils.js";
import { ed25519 } from "@noble/curves/ed25519.js";

export type LedgerFormat = "gatehouse.ledger.v1" | "gatehouse.ledger.v2";

const ENTRY_TAG = utf8ToBytes("gatehouse.ledger.entry.v1\0");
const U64_MAX = (1n << 64n) - 1n;
const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

export { bytesToHex, hexToBytes };

export function base64ToBytes(text: string): Uint8Array {
  // atob accepts missing padding and whitespace; signatures must be exact, so check first.
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text)) {
    throw new Error("not standard base64");
  }
  return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
}

export function bytesToBase64(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

/** A hash as 64 lower-case hex digits, or an error saying which field is wrong. */
export function hash32(hex: string, what: string): Uint8Array {
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new Error(`${what} is not 64 lower-case hex digits`);
  return hexToBytes(hex);
}

export interface EntryFields {
  index: bigint;
  streamSequence: bigint;
  /** Signed nanoseconds since the epoch: beyond 2^53, hence bigint. */
  receivedAt: bigint;
  previousHash: Uint8Array;
  event: Uint8Array;
}

/** The entry's canonical encoding (ledger.md, *Entry*). */
export function entryEncoding(e: EntryFields): Uint8Array {
  if (e.index < 0n || e.index > U64_MAX) throw new Error("index out of range");
  if (e.streamSequence < 0n || e.streamSequence > U64_MAX) throw new Error("stream_sequence out of range");
  if (e.receivedAt < I64_MIN || e.receivedAt > I64_MAX) throw new Error("received_at out of range");
  if (e.previousHash.length !== 32) throw new Error("previous_hash is not 32 bytes");
  if (e.event.length > 0xffffffff) throw new Error("event too long");
  const fixed = new Uint8Array(28);
  const view = new DataView(fixed.buffer);
  view.setBigUint64(0, e.index);
  view.setBigUint64(8, e.streamSequence);
  view.setBigInt64(16, e.receivedAt);
  view.setUint32(24, e.event.length);
  return concatBytes(ENTRY_TAG, fixed.subarray(0, 24), e.previousHash, fixed.subarray(24), e.event);
}

export function entryHash(encoding: Uint8Array): Uint8Array {
  return blake3(encoding);
}

/** v2 leaves hash the entry hash; v1 leaves hash the whole encoding. */
export function leafHash(format: LedgerFormat, encoding: Uint8Array): Uint8Array {
  const input = format === "gatehouse.ledger.v2" ? entryHash(encoding) : encoding;
  return blake3(concatBytes(Uint8Array.of(0), input));
}

export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  return blake3(concatBytes(Uint8Array.of(1), left, right));
}

export function emptyRoot(): Uint8Array {
  return blake3(new Uint8Array(0));
}

function largestPowerOfTwoBelow(n: number): number {
  let k = 1;
  while (k * 2 < n) k *= 2;
  return k;
}

/** RFC 9162 MTH over leaf hashes (for tests and small trees). */
export function merkleRoot(leaves: Uint8Array[]): Uint8Array {
  if (leaves.length === 0) return emptyRoot();
  if (leaves.length === 1) return leaves[0]!;
  const k = largestPowerOfTwoBelow(leaves.length);
  return nodeHash(merkleRoot(leaves.slice(0, k)), merkleRoot(leaves.slice(k)));
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/**
 * The root an inclusion proof leads to (RFC 9162 §2.1.3.2), or an error when the proof does
 * not fit a tree of `size` (too long or too short).
 */
export function rootFromInclusion(
  index: bigint,
  size: bigint,
  leaf: Uint8Array,
  proof: Uint8Array[],
): Uint8Array {
  if (index >= size) throw new Error(`leaf ${index} is not in a tree of ${size}`);
  let fn = index;
  let sn = size - 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) throw new Error("the inclusion proof is longer than the tree is deep");
    if ((fn & 1n) === 1n || fn === sn) {
      r = nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new Error("the inclusion proof is shorter than the tree is deep");
  return r;
}

/** RFC 9162 §2.1.4.2: does `proof` show the tree of `newSize` extends the one of `oldSize`? */
export function verifyConsistency(
  oldSize: bigint,
  newSize: bigint,
  oldRoot: Uint8Array,
  newRoot: Uint8Array,
  proof: Uint8Array[],
): boolean {
  if (oldSize > newSize) return false;
  if (oldSize === newSize) return proof.length === 0 && equalBytes(oldRoot, newRoot);
  if (oldSize === 0n) return proof.length === 0;
  let path = proof;
  if ((oldSize & (oldSize - 1n)) === 0n) path = [oldRoot, ...proof];
  if (path.length === 0) return false;
  let fn = oldSize - 1n;
  let sn = newSize - 1n;
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr = path[0]!;
  let sr = path[0]!;
  for (const c of path.slice(1)) {
    if (sn === 0n) return false;
    if ((fn & 1n) === 1n || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n && equalBytes(fr, oldRoot) && equalBytes(sr, newRoot);
}

// ----- signed notes -----

export interface SignatureLine {
  name: string;
  /** Key id (4 bytes) then the signature, and for cosignatures an 8-byte timestamp between. */
  blob: Uint8Array;
}

export interface Note {
  /** The signed text, final newline included. */
  text: string;
  signatures: SignatureLine[];
}

const SIGNATURE_PREFIX = "\u2014 ";

export function parseNote(note: string): Note {
  const split = note.indexOf("\n\n");
  if (split < 0) throw new Error("no blank line between the text and the signatures");
  const text = note.slice(0, split + 1);
  const rest = note.slice(split + 2);
  if (!rest.endsWith("\n")) throw new Error("the last signature line does not end with a newline");
  const signatures = rest
    .slice(0, -1)
    .split("\n")
    .map((line) => {
      if (!line.startsWith(SIGNATURE_PREFIX)) throw new Error("a signature line does not start with an em dash");
      const parts = line.slice(SIGNATURE_PREFIX.length).split(" ");
      if (parts.length !== 2 || !parts[0]) throw new Error("a signature line is not a name and a signature");
      return { name: parts[0], blob: base64ToBytes(parts[1]!) };
    });
  if (signatures.length === 0) throw new Error("the note carries no signature");
  return { text, signatures };
}

export interface Checkpoint {
  origin: string;
  size: bigint;
  root: Uint8Array;
  /** Lines after the root (extensions such as a witnessed checkpoint's `blake3-root`). */
  extensions: string[];
}

export function parseCheckpointText(text: string): Checkpoint {
  const lines = text.split("\n");
  if (lines.pop() !== "") throw new Error("the checkpoint text does not end with a newline");
  const [origin, size, root, ...extensions] = lines;
  if (!origin) throw new Error("no origin line");
  if (size === undefined || !/^(0|[1-9][0-9]{0,19})$/.test(size)) throw new Error("the tree size is not a decimal number");
  if (BigInt(size) > U64_MAX) throw new Error("the tree size is too large");
  if (root === undefined) throw new Error("no root hash line");
  let rootBytes: Uint8Array;
  try {
    rootBytes = base64ToBytes(root);
  } catch {
    throw new Error("the root hash is not base64");
  }
  if (rootBytes.length !== 32) throw new Error("the root hash is not 32 bytes");
  return { origin, size: BigInt(size), root: rootBytes, extensions };
}

/** Signed-note key types: 0x01 Ed25519 signatures, 0x04 Ed25519 cosignatures (cosignature/v1). */
export const ED25519 = 0x01;
export const COSIGNATURE_V1 = 0x04;

export interface VerifierKey {
  name: string;
  type: number;
  publicKey: Uint8Array;
  keyId: Uint8Array;
}

export function keyId(name: string, type: number, publicKey: Uint8Array): Uint8Array {
  return sha256(concatBytes(utf8ToBytes(name + "\n"), Uint8Array.of(type), publicKey)).slice(0, 4);
}

/** `<name>+<key id, 8 hex>+<base64(type ‖ public key)>`. */
export function parseVerifierKey(vkey: string): VerifierKey {
  // The base64 key may itself hold '+': only the first two separate fields.
  const text = vkey.trim();
  const first = text.indexOf("+");
  const second = first < 0 ? -1 : text.indexOf("+", first + 1);
  if (second < 0) throw new Error("a verifier key is <name>+<key id>+<key>");
  const name = text.slice(0, first);
  const id = text.slice(first + 1, second);
  const key = text.slice(second + 1);
  if (!name || /\s/.test(name)) throw new Error("the key name is empty or has spaces");
  if (!/^[0-9a-f]{8}$/.test(id)) throw new Error("the key id is not 8 hex digits");
  const raw = base64ToBytes(key);
  if (raw.length !== 33) throw new Error("an Ed25519 key is one type byte and 32 bytes");
  const type = raw[0]!;
  if (type !== ED25519 && type !== COSIGNATURE_V1) throw new Error("not an Ed25519 key");
  const publicKey = raw.slice(1);
  const computed = keyId(name, type, publicKey);
  if (bytesToHex(computed) !== id) throw new Error("the key id does not match the key");
  return { name, type, publicKey, keyId: computed };
}

export type SignatureCheck =
  | { ok: true; text: string }
  | { ok: false; reason: string };

/** Checks the note's signature by `key`; other signers' lines are ignored, as C2SP says. */
export function verifyNote(note: string, key: VerifierKey): SignatureCheck {
  let parsed: Note;
  try {
    parsed = parseNote(note);
  } catch (e) {
    return { ok: false, reason: `the note is malformed: ${(e as Error).message}` };
  }
  if (key.type !== ED25519) return { ok: false, reason: "the key is not a signing key (type 0x01)" };
  for (const line of parsed.signatures) {
    if (line.name !== key.name || line.blob.length < 4 || !equalBytes(line.blob.subarray(0, 4), key.keyId)) continue;
    const signature = line.blob.subarray(4);
    let valid = false;
    try {
      valid = signature.length === 64 && ed25519.verify(signature, utf8ToBytes(parsed.text), key.publicKey);
    } catch {
      valid = false;
    }
    return valid
      ? { ok: true, text: parsed.text }
      : { ok: false, reason: `the signature by ${key.name} does not verify: the note was changed or forged` };
  }
  return { ok: false, reason: `no signature by key ${key.name} (${bytesToHex(key.keyId)}) on the note` };
}

export interface Cosignature {
  name: string;
  keyId: string;
  /** Seconds since the epoch, when the line has the cosignature/v1 shape. */
  timestamp?: bigint;
  /** Set when a witness key of that name and id was given. */
  verified?: boolean;
}

/** Signature lines by keys other than the log's: witness cosignatures, shown for the record. */
export function otherSignatures(note: string, logKey: VerifierKey | null, witnesses: VerifierKey[] = []): Cosignature[] {
  const parsed = parseNote(note);
  const out: Cosignature[] = [];
  for (const line of parsed.signatures) {
    const id = line.blob.subarray(0, 4);
    if (logKey && line.name === logKey.name && equalBytes(id, logKey.keyId)) continue;
    const entry: Cosignature = { name: line.name, keyId: bytesToHex(id) };
    if (line.blob.length === 4 + 8 + 64) {
      const time = new DataView(line.blob.buffer, line.blob.byteOffset + 4, 8).getBigUint64(0);
      entry.timestamp = time;
      const witness = witnesses.find(
        (w) => w.type === COSIGNATURE_V1 && w.name === line.name && equalBytes(w.keyId, id),
      );
      if (witness) {
        const message = utf8ToBytes(`cosignature/v1\ntime ${time}\n${parsed.text}`);
        try {
          entry.verified = ed25519.verify(line.blob.subarray(12), message, witness.publicKey);
        } catch {
          entry.verified = false;
        }
      }
    }
    out.push(entry);
  }
  return out;
}

// ----- one event from the auditor API -----

/** `GET /v1/events/{index}`, with the integers kept exact (see json.ts). */
export interface EventAnswer {
  index: bigint;
  stream_sequence: bigint;
  received_at: bigint;
  previous_hash: string;
  entry_hash: string;
  leaf_hash: string;
  ledger_format: LedgerFormat | null;
  event_base64: string | null;
  pruned_at: bigint | null;
  size: bigint;
  root: string;
  inclusion: string[];
  checkpoint: string | null;
}

export type StepStatus = "ok" | "failed" | "skipped";

export interface Step {
  name: string;
  status: StepStatus;
  detail: string;
}

export interface ProofReport {
  /** True only when every step passed, the checkpoint's signature included. */
  verified: boolean;
  steps: Step[];
  /** The event's bytes as hashed (null once pruned): what the page shows. */
  event: Uint8Array | null;
  checkpoint: Checkpoint | null;
}

/**
 * Recomputes everything the answer claims from the bytes it carries: entry hash, leaf, the
 * root through the inclusion proof, the checkpoint's root and size, and its signature by `key`
 * (the operator's verifier key; without one the signature is not checked and the report says
 * so).
 */
export function checkEventProof(answer: EventAnswer, key: VerifierKey | null): ProofReport {
  const steps: Step[] = [];
  const ok = (name: string, detail: string) => steps.push({ name, status: "ok", detail });
  const failed = (name: string, detail: string) => steps.push({ name, status: "failed", detail });
  const skipped = (name: string, detail: string) => steps.push({ name, status: "skipped", detail });
  let event: Uint8Array | null = null;
  let checkpoint: Checkpoint | null = null;
  const done = (): ProofReport => ({
    verified: steps.length > 0 && steps.every((s) => s.status === "ok"),
    steps,
    event,
    checkpoint,
  });

  // Bundles before v2 had v1 ledgers and named no format; an answer without one is the same.
  const format: LedgerFormat = answer.ledger_format ?? "gatehouse.ledger.v1";
  if (format !== "gatehouse.ledger.v1" && format !== "gatehouse.ledger.v2") {
    failed("Ledger format", `unknown ledger format ${String(format)}`);
    return done();
  }

  let leaf: Uint8Array;
  try {
    if (answer.event_base64 !== null) {
      event = base64ToBytes(answer.event_base64);
      const encoding = entryEncoding({
        index: answer.index,
        streamSequence: answer.stream_sequence,
        receivedAt: answer.received_at,
        previousHash: hash32(answer.previous_hash, "previous_hash"),
        event,
      });
      const hash = bytesToHex(entryHash(encoding));
      if (hash !== answer.entry_hash) {
        failed("Entry hash", `recomputed ${hash}, the ledger says ${answer.entry_hash}`);
        return done();
      }
      ok("Entry hash", `BLAKE3 of the ${encoding.length}-byte entry encoding is ${hash}`);
      leaf = leafHash(format, encoding);
      const leafHex = bytesToHex(leaf);
      if (leafHex !== answer.leaf_hash) {
        failed("Leaf hash", `recomputed ${leafHex} (${format}), the ledger says ${answer.leaf_hash}`);
        return done();
      }
      ok("Leaf hash", `${leafHex} (${format})`);
    } else {
      leaf = hash32(answer.leaf_hash, "leaf_hash");
      skipped("Entry hash", "retention pruned the event; only its hashes are kept, so the leaf is the stored one");
    }
  } catch (e) {
    failed("Entry", (e as Error).message);
    return done();
  }

  let root: Uint8Array;
  try {
    const proof = answer.inclusion.map((h, i) => hash32(h, `inclusion[${i}]`));
    root = rootFromInclusion(answer.index, answer.size, leaf, proof);
  } catch (e) {
    failed("Inclusion proof", (e as Error).message);
    return done();
  }
  const rootHex = bytesToHex(root);
  if (rootHex !== answer.root) {
    failed("Inclusion proof", `the proof leads to ${rootHex}, not to the tree's root ${answer.root}`);
    return done();
  }
  ok("Inclusion proof", `${answer.inclusion.length} hash${answer.inclusion.length === 1 ? "" : "es"} lead from leaf ${answer.index} to the root of the tree of ${answer.size}: ${rootHex}`);

  if (answer.checkpoint === null) {
    failed("Checkpoint", `no signed checkpoint covers a tree of ${answer.size} entries yet, so this root is not signed`);
    return done();
  }
  try {
    checkpoint = parseCheckpointText(parseNote(answer.checkpoint).text);
  } catch (e) {
    failed("Checkpoint", `the checkpoint is malformed: ${(e as Error).message}`);
    return done();
  }
  if (checkpoint.size !== answer.size || !equalBytes(checkpoint.root, root)) {
    failed("Checkpoint", `the checkpoint signs size ${checkpoint.size} and root ${bytesToHex(checkpoint.root)}, not this tree`);
    return done();
  }
  ok("Checkpoint", `${checkpoint.origin} signs size ${checkpoint.size} with this root`);

  if (!key) {
    skipped("Signature", "no verifier key for the checkpoint was given; paste the operator's key to check it");
    return done();
  }
  const signature = verifyNote(answer.checkpoint, key);
  if (signature.ok) ok("Signature", `Ed25519 signature by ${key.name} (key id ${bytesToHex(key.keyId)}) verifies`);
  else failed("Signature", signature.reason);
  return done();
}
