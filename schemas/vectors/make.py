#!/usr/bin/env python3
"""Known-answer vectors for schemas/ledger.md and schemas/bundle.md, computed from the documents
alone (not from the Rust code): key ids, a signed checkpoint, the seal, a signed manifest and one
complete small bundle. services/proof/tests/vectors.rs reproduces them byte for byte.

usage: ~/.cache/gatehouse/venv/bin/python schemas/vectors/make.py
                          writes keys.json, checkpoint.json, seal.json, manifest.json,
                          bundle.json and bundle.tar.gz beside this file
needs: blake3, cryptography (e.g. a venv under ~/.cache/gatehouse/venv)
"""
import base64
import hashlib
import json
import os
import struct
import zlib

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HERE = os.path.dirname(os.path.abspath(__file__))
NAME = "gatehouse.example.com/ledger"
SEED = bytes(range(32))
GZIP_HEADER = bytes.fromhex("1f8b08000000000000ff")
ENTRY_TAG = b"gatehouse.ledger.entry.v1\x00"
CREATED_AT = "2026-11-22T16:00:00Z"


def b64(data):
    return base64.b64encode(data).decode()


# ----- keys and signed notes (bundle.md, "checkpoint and keys/checkpoint.vkey") -----

KEY = Ed25519PrivateKey.from_private_bytes(SEED)
PUBLIC = KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
KEY_ID = hashlib.sha256(NAME.encode() + b"\n" + b"\x01" + PUBLIC).digest()[:4]
VKEY = f"{NAME}+{KEY_ID.hex()}+" + b64(b"\x01" + PUBLIC)
SKEY = f"PRIVATE+KEY+{NAME}+{KEY_ID.hex()}+" + b64(b"\x01" + SEED)


def sign_note(text):
    signature = KEY.sign(text.encode())
    return f"{text}\n\u2014 {NAME} {b64(KEY_ID + signature)}\n"


# ----- entries and the Merkle tree (ledger.md) -----

def encoding(index, sequence, received_at, previous, event):
    return (ENTRY_TAG + struct.pack(">QQq", index, sequence, received_at) + previous
            + struct.pack(">I", len(event)) + event)


def leaf(entry_hash):
    """Ledger format v2: the leaf is over the entry hash (v1's was over the whole encoding)."""
    return blake3.blake3(b"\x00" + entry_hash).digest()


def node(left, right):
    return blake3.blake3(b"\x01" + left + right).digest()


def split(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves):
    if not leaves:
        return blake3.blake3(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = split(len(leaves))
    return node(mth(leaves[:k]), mth(leaves[k:]))


def path(m, leaves):
    if len(leaves) == 1:
        return []
    k = split(len(leaves))
    if m < k:
        return path(m, leaves[:k]) + [mth(leaves[k:])]
    return path(m - k, leaves[k:]) + [mth(leaves[:k])]


def subproof(m, leaves, whole):
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = split(n)
    if m <= k:
        return subproof(m, leaves[:k], whole) + [mth(leaves[k:])]
    return subproof(m - k, leaves[k:], False) + [mth(leaves[:k])]


# The entries: A, B, C of ledger.md's vectors, then a session (started, three chunks, a resize).
SESSION = "01JSESSION"
EVENTS = [
    b"{}",
    b'{"a":1}',
    b'{"b":2}',
    json.dumps({"type": "dev.gatehouse.session.started.v1", "subject": SESSION,
                "data": {"session_id": SESSION, "principal": "ci-deployer", "namespace": "apps",
                         "pod": "web", "command": ["sh", "-c", "echo \"h\u00e9\""]}},
               separators=(",", ":"), ensure_ascii=False).encode(),
]
CHUNKS = [
    {"seq": 1, "at_ms": 40.5, "channel": "stdout", "data": b64("\u00e9\"\n".encode()[1:])},
    {"seq": 0, "at_ms": 12.25, "channel": "stdout", "data": b64(b"h" + "\u00e9".encode()[:1])},
    {"seq": 2, "at_ms": 50, "channel": "resize", "data": "", "resize": {"width": 120, "height": 40}},
    {"seq": 3, "at_ms": 1001, "channel": "stdin", "data": b64(b"exit\x01\n\xff")},
]
for chunk in CHUNKS:
    EVENTS.append(json.dumps({"type": "dev.gatehouse.session.data.v1", "subject": SESSION,
                              "data": chunk}, separators=(",", ":")).encode())

ENTRIES = []
previous = bytes(32)
for i, event in enumerate(EVENTS):
    received_at = 0 if i == 0 else 1795000000000000000 + i - 1
    enc = encoding(i, i + 1, received_at, previous, event)
    entry_hash = blake3.blake3(enc).digest()
    ENTRIES.append({"index": i, "stream_sequence": i + 1, "received_at": received_at,
                    "previous_hash": previous, "event": event, "encoding": enc,
                    "entry_hash": entry_hash})
    previous = entry_hash
LEAVES = [leaf(e["entry_hash"]) for e in ENTRIES]


def multiproof(start, leaves, proven):
    """tree.jsonl: every largest subtree with no proven leaf, left to right (bundle.md)."""
    n = len(leaves)
    if not any(start <= i < start + n for i in proven):
        return [(start, n, mth(leaves))]
    if n == 1:
        return []
    k = split(n)
    return multiproof(start, leaves[:k], proven) + multiproof(start + k, leaves[k:], proven)


def checkpoint_note(size):
    text = f"{NAME}\n{size}\n{b64(mth(LEAVES[:size]))}\n"
    return text, sign_note(text)


# ----- recordings (bundle.md, "Recordings") -----

def json_string(text):
    return json.dumps(text, ensure_ascii=False)


def take_utf8(pending):
    """The longest complete UTF-8 prefix, ill-formed subparts as U+FFFD; the rest stays."""
    decoder = __import__("codecs").getincrementaldecoder("utf-8")(errors="replace")
    text = decoder.decode(bytes(pending), final=False)
    rest, _ = decoder.getstate()
    del pending[:len(pending) - len(rest)]
    return text


def recording(started, chunks):
    chunks = sorted(chunks, key=lambda c: c["seq"])
    s = started["data"]
    title = f"{s['principal']} {s['namespace']}/{s['pod']}" + "".join(" " + w for w in s["command"])
    width, height = 80, 24
    for c in chunks:
        if c["channel"] == "resize" and c.get("resize"):
            width, height = c["resize"]["width"], c["resize"]["height"]
            break
    out = f'{{"height":{height},"title":{json_string(title)},"version":2,"width":{width}}}\n'
    pending = {"i": bytearray(), "o": bytearray()}
    for c in chunks:
        t = "%.6f" % (c["at_ms"] / 1000)
        if c["channel"] == "resize":
            if c.get("resize"):
                out += f'[{t},"r","{c["resize"]["width"]}x{c["resize"]["height"]}"]\n'
            continue
        code = {"stdout": "o", "stderr": "o", "stdin": "i"}.get(c["channel"])
        if code is None:
            continue
        pending[code] += base64.b64decode(c["data"], validate=True)
        text = take_utf8(pending[code])
        if text:
            out += f'[{t},"{code}",{json_string(text)}]\n'
    last = "%.6f" % (chunks[-1]["at_ms"] / 1000) if chunks else "0.000000"
    for code in ("i", "o"):
        if pending[code]:
            out += f'[{last},"{code}",{json_string(bytes(pending[code]).decode("utf-8", "replace"))}]\n'
    return out.encode()


# ----- the archive, gzip and the seal (bundle.md, "The file", "The archive") -----

def ustar_header(name, size):
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    h[100:108] = b"0000644\x00"
    h[108:116] = b"0000000\x00"
    h[116:124] = b"0000000\x00"
    h[124:136] = b"%011o\x00" % size
    h[136:148] = b"00000000000\x00"
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%07o\x00" % sum(h)
    return bytes(h)


def tar(members):
    out = b""
    for name, data in members:
        out += ustar_header(name, len(data)) + data
        out += bytes(-len(out) % 512)
    return out + bytes(1024)


def gzip_member(data):
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated = compressor.compress(data) + compressor.flush()
    return GZIP_HEADER + deflated + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def seal(body):
    text = ("gatehouse-bundle-blake3 " + blake3.blake3(body).hexdigest() + "\n").encode()
    return (GZIP_HEADER + b"\x01" + struct.pack("<HH", len(text), 0xFFFF ^ len(text)) + text
            + struct.pack("<II", zlib.crc32(text), len(text)))


def manifest_note_text(manifest_bytes):
    return f"gatehouse-bundle-manifest v2\n{blake3.blake3(manifest_bytes).hexdigest()}\n"


def digest(data):
    return {"bytes": len(data), "blake3": blake3.blake3(data).hexdigest()}


def index_md(m):
    """INDEX.md (for people, not evidence) as gatehouse writes it, so the tar is exact."""
    dash = lambda v: "-" if v is None else str(v)
    c, r = m["counts"], m["range"]
    out = "# Gatehouse evidence bundle\n\n"
    out += f"Created {m['created_at']} (format `{m['format']}`).\n\n## What it holds\n\n"
    out += (f"- {c['events']} events (ledger entries {dash(r['first_index'])} to "
            f"{dash(r['last_index'])})"
            + (", every entry in between" if m["contiguous"] else ", those matching the filters")
            + "\n")
    out += (f"- {c['sessions']} session recordings (asciicast v2, `recordings/`, rebuilt from "
            "the session events)\n")
    out += f"- {c['tombstones']} pruned entries (`tombstones.jsonl`)\n"
    if r["from"] is not None:
        out += f"- events from {r['from']}\n"
    if r["to"] is not None:
        out += f"- events before {r['to']}\n"
    for k, v in sorted(m["filters"].items()):
        out += f"- filter {k} = {v}\n"
    cp = m["checkpoint"]
    out += (f"\nEvery event is proven to be in the ledger whose Merkle tree of {cp['size']} "
            f"entries has the root `{cp['root']}`, signed in `checkpoint` by the key in "
            f"`keys/checkpoint.vkey` (origin `{cp['origin']}`), which also signs "
            "`manifest.json` (in `manifest.sig`).\n\n")
    out += ("## How to check it\n\n```sh\ngatehouse verify BUNDLE.tar.gz --key "
            "YOUR-COPY-OF-THE.vkey\n```\n\n")
    out += ("Use the verifier key you obtained from the ledger's operator, not only the one in "
            "`keys/`. The formats are specified in `schemas/ledger.md` and `schemas/bundle.md`."
            "\n\n## Files\n\n| file | bytes | BLAKE3 |\n|---|---|---|\n")
    for name, d in sorted(m["files"].items()):
        out += f"| `{name}` | {d['bytes']} | `{d['blake3']}` |\n"
    return out


def bundle(size, since, first):
    _, note = checkpoint_note(size)
    members = [("checkpoint", note.encode())]
    consistency = {"old_size": since, "old_root": mth(LEAVES[:since]).hex(),
                   "proof": [h.hex() for h in subproof(since, LEAVES[:size], True)]}
    members.append(("consistency.json", json.dumps(consistency, separators=(",", ":")).encode() + b"\n"))
    members.append(("keys/checkpoint.vkey", (VKEY + "\n").encode()))
    held = ENTRIES[first:size]
    tree = b"".join(json.dumps({"start": s, "size": z, "hash": h.hex()},
                               separators=(",", ":")).encode() + b"\n"
                    for s, z, h in multiproof(0, LEAVES[:size], [e["index"] for e in held]))
    events, entries = b"", b""
    for e in held:
        events += e["event"] + b"\n"
        entries += json.dumps({
            "index": e["index"], "stream_sequence": e["stream_sequence"],
            "received_at": e["received_at"], "previous_hash": e["previous_hash"].hex(),
        }, separators=(",", ":")).encode() + b"\n"
    described = [("tombstones.jsonl", b""), ("tree.jsonl", tree), ("entries.jsonl", entries),
                 ("events.jsonl", events)]
    started = json.loads(EVENTS[3])
    described.append((f"recordings/{SESSION}.cast", recording(started, CHUNKS)))
    manifest = {
        "format": "gatehouse.bundle.v2",
        "created_at": CREATED_AT,
        "filters": {},
        "contiguous": True,
        "range": {"first_index": first, "last_index": size - 1, "from": None, "to": None},
        "checkpoint": {"origin": NAME, "size": size, "root": mth(LEAVES[:size]).hex()},
        "ledger_format": "gatehouse.ledger.v2",
        "counts": {"events": len(held), "sessions": 1, "tombstones": 0},
        "files": {name: digest(data) for name, data in members + described},
    }
    index = index_md(manifest).encode()
    manifest["files"]["INDEX.md"] = digest(index)
    manifest["files"] = dict(sorted(manifest["files"].items()))
    described.append(("INDEX.md", index))
    manifest_bytes = json.dumps(manifest, indent=2).encode() + b"\n"
    signature = sign_note(manifest_note_text(manifest_bytes))
    members += [("manifest.json", manifest_bytes), ("manifest.sig", signature.encode())]
    members += described
    archive = tar(members)
    body = gzip_member(archive)
    return members, archive, body + seal(body), manifest_bytes, signature


def write(name, value):
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
        f.write("\n")


def main():
    note_by = "Computed by schemas/vectors/make.py with Python's cryptography and blake3, from schemas/ledger.md and schemas/bundle.md alone."
    write("keys.json", {
        "description": "An Ed25519 signed-note key from a fixed seed: key id = SHA-256(name ‖ '\\n' ‖ 0x01 ‖ public key)[:4]. " + note_by,
        "name": NAME, "seed_hex": SEED.hex(), "public_key_hex": PUBLIC.hex(),
        "key_id_hex": KEY_ID.hex(), "verifier_key": VKEY, "private_key": SKEY,
    })
    text, note = checkpoint_note(3)
    write("checkpoint.json", {
        "description": "The tree (ledger format v2: leaves over entry hashes) of entries A, B, C of ledger.md (size 3) signed as a checkpoint with keys.json's key. " + note_by,
        "origin": NAME, "size": 3, "root_hex": mth(LEAVES[:3]).hex(), "text": text, "note": note,
    })
    seals = []
    for data in [b"", b"gatehouse"]:
        seals.append({"input_hex": data.hex(), "blake3_hex": blake3.blake3(data).hexdigest(),
                      "seal_hex": seal(data).hex()})
    write("seal.json", {
        "description": "The seal (bundle.md, 'The file') over the bytes before it. " + note_by,
        "seals": seals,
    })
    size, since, first = len(ENTRIES), 3, 1
    members, archive, whole, manifest_bytes, signature = bundle(size, since, first)
    write("manifest.json", {
        "description": "The complete bundle's manifest.json and its manifest.sig (a signed note over its BLAKE3, signed with keys.json's key). " + note_by,
        "manifest": manifest_bytes.decode(), "note_text": manifest_note_text(manifest_bytes),
        "signature": signature,
    })
    with open(os.path.join(HERE, "bundle.tar.gz"), "wb") as f:
        f.write(whole)
    write("bundle.json", {
        "description": f"bundle.tar.gz: entries {first} to {size - 1} of a {size}-entry ledger of format v2 (A, B, C of ledger.md, then a session; tree.jsonl gives leaf A), with a consistency proof from the tree of {since} (checkpoint.json), written by make.py. The Rust writer, given the same entries, checkpoint, created_at and since, must write the same tar (the archive member's decompressed bytes); deflate may differ. " + note_by,
        "created_at": CREATED_AT,
        "since": since,
        "first": first,
        "entries": [{"index": e["index"], "stream_sequence": e["stream_sequence"],
                     "received_at": e["received_at"], "previous_hash": e["previous_hash"].hex(),
                     "event": e["event"].decode(), "entry_hash": e["entry_hash"].hex()}
                    for e in ENTRIES],
        "members": [{"name": n, "bytes": len(d), "blake3": blake3.blake3(d).hexdigest()} for n, d in members],
        "recording": dict(members)[f"recordings/{SESSION}.cast"].decode(),
        "tar_blake3": blake3.blake3(archive).hexdigest(),
        "tar_bytes": len(archive),
        "file_blake3": blake3.blake3(whole).hexdigest(),
    })


if __name__ == "__main__":
    main()
