// JSON with exact integers: ledger times are nanoseconds (beyond 2^53) and events may carry
// any number, so answers are read with lossless-json rather than JSON.parse.
import { isLosslessNumber, parse, stringify, type LosslessNumber } from "lossless-json";
import type { EventAnswer, LedgerFormat } from "./proof";

export function parseExact(text: string): unknown {
  return parse(text);
}

/** Pretty-printed, every number exactly as written. */
export function pretty(value: unknown): string {
  return stringify(value, null, 2) ?? "null";
}

/** JSON text re-indented; text that is not JSON is returned as it is. */
export function prettyText(text: string): string {
  try {
    return pretty(parse(text));
  } catch {
    return text;
  }
}

function field(o: Record<string, unknown>, name: string): unknown {
  if (!(name in o)) throw new Error(`the answer has no ${name}`);
  return o[name];
}

export function bigintOf(v: unknown, name: string): bigint {
  if (isLosslessNumber(v)) {
    const text = (v as LosslessNumber).value;
    if (!/^-?[0-9]+$/.test(text)) throw new Error(`${name} is not a whole number`);
    return BigInt(text);
  }
  if (typeof v === "number" && Number.isSafeInteger(v)) return BigInt(v);
  if (typeof v === "bigint") return v;
  throw new Error(`${name} is not a whole number`);
}

export function numberOf(v: unknown): number | null {
  if (isLosslessNumber(v)) return Number((v as LosslessNumber).value);
  return typeof v === "number" ? v : null;
}

function stringOf(v: unknown, name: string): string {
  if (typeof v !== "string") throw new Error(`${name} is not a string`);
  return v;
}

function nullableString(v: unknown, name: string): string | null {
  return v === null || v === undefined ? null : stringOf(v, name);
}

/** `GET /v1/events/{index}` read from its text (so received_at stays exact). */
export function eventAnswerFromText(text: string): { answer: EventAnswer; raw: Record<string, unknown> } {
  const raw = parse(text) as Record<string, unknown>;
  if (typeof raw !== "object" || raw === null) throw new Error("the answer is not a JSON object");
  const inclusion = field(raw, "inclusion");
  if (!Array.isArray(inclusion)) throw new Error("inclusion is not a list");
  const pruned = raw["pruned_at"];
  const answer: EventAnswer = {
    index: bigintOf(field(raw, "index"), "index"),
    stream_sequence: bigintOf(field(raw, "stream_sequence"), "stream_sequence"),
    received_at: bigintOf(field(raw, "received_at"), "received_at"),
    previous_hash: stringOf(field(raw, "previous_hash"), "previous_hash"),
    entry_hash: stringOf(field(raw, "entry_hash"), "entry_hash"),
    leaf_hash: stringOf(field(raw, "leaf_hash"), "leaf_hash"),
    ledger_format: nullableString(raw["ledger_format"], "ledger_format") as LedgerFormat | null,
    event_base64: nullableString(raw["event_base64"], "event_base64"),
    pruned_at: pruned === null || pruned === undefined ? null : bigintOf(pruned, "pruned_at"),
    size: bigintOf(field(raw, "size"), "size"),
    root: stringOf(field(raw, "root"), "root"),
    inclusion: inclusion.map((h, i) => stringOf(h, `inclusion[${i}]`)),
    checkpoint: nullableString(raw["checkpoint"], "checkpoint"),
  };
  return { answer, raw };
}

/** Nanoseconds since the epoch as RFC 3339 with the nanoseconds kept. */
export function nanosToRfc3339(ns: bigint): string {
  const rest = ((ns % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n;
  const seconds = (ns - rest) / 1_000_000_000n;
  const iso = new Date(Number(seconds) * 1000).toISOString(); // yyyy-mm-ddThh:mm:ss.sssZ
  return `${iso.slice(0, 19)}.${rest.toString().padStart(9, "0")}Z`;
}
