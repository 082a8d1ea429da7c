#!/usr/bin/env python3
"""An independent verifier of Gatehouse evidence bundles, written from schemas/ledger.md and
schemas/bundle.md alone (not from the Rust code), so the documents are tested as a contract.

usage: verify_bundle.py BUNDLE VKEY_FILE [--witness WVKEY ... --min-witnesses K]
                                               exit 0 if it verifies, 1 naming the failure
needs: blake3, cryptography; recordings are rebuilt with schemas/vectors/make.py's `recording`
(also written from bundle.md alone)
"""
import base64
import gzip
import hashlib
import io
import json
import struct
import sys
import tarfile
import zlib

import os

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../schemas/vectors"))
from make import recording, subproof  # noqa: E402  (bundle.md's recordings; ledger.md's PROOF)

HEADER = bytes.fromhex("1f8b08000000000000ff")
SEAL_LEN = 112
TAG = b"gatehouse.ledger.entry.v1\x00"
ORDER_V1 = ["checkpoint", "keys/checkpoint.vkey", "events.jsonl", "proofs.jsonl",
            "tombstones.jsonl", "recordings/", "INDEX.md", "manifest.json"]
ORDER = ["checkpoint", "consistency.json", "keys/checkpoint.vkey", "witnessed-checkpoint",
         "manifest.json", "manifest.sig", "tombstones.jsonl", "tree.jsonl", "entries.jsonl",
         "events.jsonl", "recordings/", "INDEX.md"]


def rank(name, order):
    for i, prefix in enumerate(order):
        if name == prefix or (prefix.endswith("/") and name.startswith(prefix)):
            return i
    raise Failed(f"{name} is not a member a bundle holds")


class Failed(Exception):
    pass


def check(ok, why):
    if not ok:
        raise Failed(why)


def seal(digest_hex):
    text = ("gatehouse-bundle-blake3 " + digest_hex + "\n").encode()
    return (HEADER + b"\x01" + struct.pack("<HH", 89, 0xFFFF ^ 89) + text
            + struct.pack("<II", zlib.crc32(text), 89))


def leaf(encoding, ledger_format):
    """ledger.md: v1 leaves hash the whole encoding, v2 leaves the entry hash."""
    if ledger_format == "gatehouse.ledger.v2":
        return blake3.blake3(b"\x00" + blake3.blake3(encoding).digest()).digest()
    check(ledger_format == "gatehouse.ledger.v1", f"unknown ledger format {ledger_format}")
    return blake3.blake3(b"\x00" + encoding).digest()


def split(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def rebuild(start, size, leaves, given):
    """bundle.md's tree.jsonl: the root of leaves start..start+size from the proven leaves and,
    for a subtree holding none of them, the next given line, which must name it."""
    if not any(start <= i < start + size for i in leaves):
        check(given, f"tree.jsonl ends before the subtree {start}+{size}")
        line = given.pop(0)
        check((line["start"], line["size"]) == (start, size),
              f"tree.jsonl gives {line['start']}+{line['size']}, not {start}+{size}")
        check(len(line["hash"]) == 64 and line["hash"] == line["hash"].lower(), "upper-case hex")
        return bytes.fromhex(line["hash"])
    if size == 1:
        return leaves[start]
    k = split(size)
    return node(rebuild(start, k, leaves, given), rebuild(start + k, size - k, leaves, given))


def node(left, right):
    return blake3.blake3(b"\x01" + left + right).digest()


def verify_inclusion(leaf_hash, index, size, path, root):
    # RFC 9162 2.1.3.2, as ledger.md restates it.
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def parse_vkey(text):
    name, key_id, key = text.strip().split("+", 2)
    raw = base64.b64decode(key)
    check(raw[0] == 1 and len(raw) == 33, "the verifier key is not Ed25519")
    computed = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    check(computed.hex() == key_id, "the verifier key's id does not match it")
    return name, computed, Ed25519PublicKey.from_public_bytes(raw[1:])


def open_note(note, vkey):
    """The text of a signed note, if the key signed it."""
    name, key_id, public = vkey
    text, _, signatures = note.partition("\n\n")
    text += "\n"
    for line in signatures.splitlines():
        check(line.startswith("\u2014 "), "a signature line does not start with an em dash")
        signer, blob = line[2:].split(" ", 1)
        blob = base64.b64decode(blob)
        if signer == name and blob[:4] == key_id:
            public.verify(blob[4:], text.encode())  # raises if forged
            return text
    raise Failed("the note is not signed by the given key")


def parse_witness_vkey(text):
    """bundle.md, Witnesses: <name>+<key id>+base64(0x04 ‖ public key)."""
    name, key_id, key = text.strip().split("+", 2)
    raw = base64.b64decode(key)
    check(raw[0] == 4 and len(raw) == 33, f"witness key {name} is not a cosignature/v1 key")
    computed = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    check(computed.hex() == key_id, f"witness key {name}'s id does not match it")
    return name, computed, Ed25519PublicKey.from_public_bytes(raw[1:])


def check_witnesses(note, vkey, origin, size, root, witnesses, needed):
    """bundle.md, Witnesses: the witnessed checkpoint and K witnesses' cosignatures on it."""
    name, _, public = vkey
    witnessed_name = origin + "/rfc6962"
    key_id = hashlib.sha256(witnessed_name.encode() + b"\n" + b"\x01" + public.public_bytes_raw()).digest()[:4]
    text = open_note(note, (witnessed_name, key_id, public))
    lines = text.split("\n")
    check(len(lines) == 5 and lines[4] == "", "the witnessed checkpoint is not four lines")
    check(lines[0] == witnessed_name, "the witnessed checkpoint is of another origin")
    check(lines[1] == str(size), "the witnessed checkpoint is of another size")
    check(lines[3] == "blake3-root " + base64.b64encode(root).decode(),
          "the witnessed checkpoint names another BLAKE3 root")
    signatures = note.partition("\n\n")[2].splitlines()
    cosigned = set()
    for wname, wid, wpublic in witnesses:
        for line in signatures:
            signer, _, blob = line[2:].partition(" ")
            blob = base64.b64decode(blob)
            if signer != wname or blob[:4] != wid or len(blob) != 4 + 8 + 64:
                continue
            timestamp = struct.unpack(">Q", blob[4:12])[0]
            message = f"cosignature/v1\ntime {timestamp}\n".encode() + text.encode()
            try:
                wpublic.verify(blob[12:], message)
                cosigned.add(wname)
            except Exception:
                pass
    check(len(cosigned) >= needed,
          f"{len(cosigned)} of the witness keys given cosigned the checkpoint, fewer than {needed}")
    return sorted(cosigned)


def open_checkpoint(note, vkey):
    origin, size, root = open_note(note, vkey).split("\n")[:3]
    check(str(int(size)) == size, "the tree size is not canonical decimal")
    return origin, int(size), base64.b64decode(root)


def verify_consistency(old, new, old_root, new_root, proof):
    # RFC 9162 2.1.4.2, as ledger.md restates it.
    if old == new:
        return not proof and old_root == new_root
    path = ([old_root] if old & (old - 1) == 0 else []) + proof
    if not path or old == 0 or old > new:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def main(bundle_path, vkey_path, witness_paths=(), needed=0):
    data = open(bundle_path, "rb").read()
    check(len(data) > SEAL_LEN + 10, "too short")
    body, tail = data[:-SEAL_LEN], data[-SEAL_LEN:]
    check(tail == seal(blake3.blake3(body).hexdigest()), "the seal does not match")
    check(body[:10] == HEADER, "the gzip header is not the one bundles use")
    tar_bytes = gzip.decompress(body)  # checks CRC-32 and length; one member only
    files, order = {}, []
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as archive:
        for member in archive:
            check(member.isreg(), f"{member.name} is not a regular file")
            check(member.name not in files, f"{member.name} appears twice")
            files[member.name] = archive.extractfile(member).read()
            order.append(member.name)
    manifest = json.loads(files["manifest.json"])
    v2 = manifest["format"] == "gatehouse.bundle.v2"
    check(v2 or manifest["format"] == "gatehouse.bundle.v1", "unknown format")
    members = ORDER if v2 else ORDER_V1
    check([(rank(n, members), n) for n in order] == sorted((rank(n, members), n) for n in order),
          "the members are not in bundle.md's order")
    ledger_format = manifest["ledger_format"] if v2 else "gatehouse.ledger.v1"
    check(manifest["contiguous"] == (manifest["filters"] == {}), "contiguous is not 'no filters'")
    listed = manifest["files"]
    check(set(listed) == set(files) - {"manifest.json", "manifest.sig"}, "the manifest lists other files")
    for name, d in listed.items():
        check(len(files[name]) == d["bytes"] and blake3.blake3(files[name]).hexdigest() == d["blake3"],
              f"{name} does not match its digest")
    vkey_text = open(vkey_path).read().strip()
    vkey = parse_vkey(vkey_text)
    check(files["keys/checkpoint.vkey"].decode() == vkey_text + "\n",
          "keys/checkpoint.vkey is not the given key")
    origin, size, root = open_checkpoint(files["checkpoint"].decode(), vkey)
    if v2:
        text = open_note(files["manifest.sig"].decode(), vkey)
        check(text == "gatehouse-bundle-manifest v2\n" + blake3.blake3(files["manifest.json"]).hexdigest() + "\n",
              "manifest.sig does not sign manifest.json")
    cp = manifest["checkpoint"]
    check((cp["origin"], cp["size"], cp["root"]) == (origin, size, root.hex()), "the manifest names another checkpoint")

    events = files["events.jsonl"].split(b"\n")
    check(events[-1] == b"", "events.jsonl does not end with a newline")
    events = events[:-1] if files["events.jsonl"] else []
    proofs = files["entries.jsonl" if v2 else "proofs.jsonl"].decode().splitlines()
    check(len(events) == len(proofs) == manifest["counts"]["events"], "line counts differ")
    pruned, leaves = set(), {}
    for line in files["tombstones.jsonl"].decode().splitlines():
        t = json.loads(line)
        check(not pruned or t["index"] > max(pruned), "tombstones out of order")
        if v2:
            check(set(t) == {"index", "leaf_hash"}, "a tombstone line has other members")
            leaves[t["index"]] = bytes.fromhex(t["leaf_hash"])
        else:
            check(verify_inclusion(bytes.fromhex(t["leaf_hash"]), t["index"], size,
                                   [bytes.fromhex(h) for h in t["inclusion"]], root), "a tombstone is not proven")
        pruned.add(t["index"])
    check(len(pruned) == manifest["counts"]["tombstones"], "counts.tombstones is wrong")
    previous = None
    for event, line in zip(events, proofs):
        p = json.loads(line)
        encoding = (TAG + struct.pack(">QQq", p["index"], p["stream_sequence"], p["received_at"])
                    + bytes.fromhex(p["previous_hash"]) + struct.pack(">I", len(event)) + event)
        entry_hash = blake3.blake3(encoding).digest()
        if v2:
            check(set(p) == {"index", "stream_sequence", "received_at", "previous_hash"},
                  "an entries.jsonl line has other members")
            check(p["index"] not in leaves, f"entry {p['index']} is both an event and a tombstone")
            check(p["index"] < size, f"entry {p['index']} is beyond the checkpoint")
            leaves[p["index"]] = leaf(encoding, ledger_format)
        else:
            check(entry_hash.hex() == p["entry_hash"], f"entry {p['index']} does not hash to its entry_hash")
            check(verify_inclusion(leaf(encoding, ledger_format), p["index"], size,
                                   [bytes.fromhex(h) for h in p["inclusion"]], root),
                  f"entry {p['index']} is not proven in the checkpoint")
        if previous is not None:
            check(p["index"] > previous[0], f"entry {p['index']} is out of order")
            if p["index"] == previous[0] + 1:
                check(bytes.fromhex(p["previous_hash"]) == previous[1], f"entry {p['index']} does not link")
            elif manifest["contiguous"]:
                check(all(i in pruned for i in range(previous[0] + 1, p["index"])),
                      f"entries missing before {p['index']}, not all tombstones")
        previous = (p["index"], entry_hash)
    if v2:
        given = [json.loads(line) for line in files["tree.jsonl"].decode().splitlines()]
        rebuilt = rebuild(0, size, leaves, given) if size else blake3.blake3(b"").digest()
        check(not given, "tree.jsonl has lines the tree does not need")
        check(rebuilt == root, "the leaves and tree.jsonl do not rebuild the checkpoint's root")
    started, data = {}, {}
    for event in events:
        try:
            e = json.loads(event)
        except ValueError:
            continue
        if not isinstance(e, dict):
            continue
        if e.get("type") == "dev.gatehouse.session.started.v1":
            started.setdefault(e["subject"], e)
        elif e.get("type") == "dev.gatehouse.session.data.v1":
            data.setdefault(e["subject"], []).append(e["data"])
    sessions = {s for s in started if 0 < len(s) <= 84 and all(c.isascii() and (c.isalnum() or c in "-_") for c in s)}
    held = {n[len("recordings/"):-len(".cast")] for n in files if n.startswith("recordings/")}
    check(held == sessions, "the recordings are not one per session started in the bundle")
    check(manifest["counts"]["sessions"] == len(held), "counts.sessions is wrong")
    if v2:
        for s in sessions:
            check(files[f"recordings/{s}.cast"] == recording(started[s], data.get(s, [])),
                  f"recordings/{s}.cast is not what its events make")
        if "consistency.json" in files:
            c = json.loads(files["consistency.json"])
            check(verify_consistency(c["old_size"], size, bytes.fromhex(c["old_root"]), root,
                                     [bytes.fromhex(h) for h in c["proof"]]),
                  "the consistency proof does not verify")
    cosigned = []
    if needed:
        check("witnessed-checkpoint" in files, "no witnessed-checkpoint in the bundle")
        witnesses = [parse_witness_vkey(open(w).read()) for w in witness_paths]
        cosigned = check_witnesses(files["witnessed-checkpoint"].decode(), vkey, origin, size,
                                   root, witnesses, needed)
    print(f"OK: {len(events)} events proven against {origin} size {size}"
          + (f", cosigned by {', '.join(cosigned)}" if cosigned else ""))


if __name__ == "__main__":
    try:
        args, witness_paths, needed = sys.argv[3:], [], 0
        while args:
            flag, value, args = args[0], args[1], args[2:]
            if flag == "--witness":
                witness_paths.append(value)
            elif flag == "--min-witnesses":
                needed = int(value)
            else:
                raise Failed(f"unknown argument {flag}")
        main(sys.argv[1], sys.argv[2], witness_paths, needed)
    except Exception as e:  # any failure, named
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
