// The object now against the object after the change, line by line (jsdiff), with long
// unchanged runs folded so the change itself is on screen.
import { diffLines } from "diff";
import { h } from "./dom";
import { pretty } from "./json";

export interface DiffRow {
  kind: "same" | "added" | "removed" | "fold";
  text: string;
  /** For a fold: the lines it hides. */
  hidden?: DiffRow[];
}

/** Keys sorted at every level, so reordered maps are not reported as changes. */
function sorted(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sorted);
  if (value && typeof value === "object" && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.fromEntries(
      Object.keys(value as object)
        .sort()
        .map((k) => [k, sorted((value as Record<string, unknown>)[k])]),
    );
  }
  return value;
}

export function prettyObject(value: unknown): string {
  return value === null || value === undefined ? "" : `${pretty(sorted(value))}\n`;
}

export function diffRows(current: unknown, proposed: unknown, context = 3): DiffRow[] {
  const rows: DiffRow[] = [];
  for (const part of diffLines(prettyObject(current), prettyObject(proposed))) {
    const kind = part.added ? "added" : part.removed ? "removed" : "same";
    for (const line of part.value.replace(/\n$/, "").split("\n")) rows.push({ kind, text: line });
  }
  // Fold runs of unchanged lines longer than twice the context.
  const out: DiffRow[] = [];
  let i = 0;
  while (i < rows.length) {
    if (rows[i]!.kind !== "same") {
      out.push(rows[i++]!);
      continue;
    }
    let j = i;
    while (j < rows.length && rows[j]!.kind === "same") j++;
    const run = rows.slice(i, j);
    const keepHead = i === 0 ? 0 : context;
    const keepTail = j === rows.length ? 0 : context;
    if (run.length > keepHead + keepTail + 1) {
      out.push(...run.slice(0, keepHead));
      out.push({ kind: "fold", text: `${run.length - keepHead - keepTail} unchanged lines`, hidden: run.slice(keepHead, run.length - keepTail) });
      out.push(...run.slice(run.length - keepTail));
    } else {
      out.push(...run);
    }
    i = j;
  }
  return out;
}

const MARK = { same: " ", added: "+", removed: "-", fold: "" } as const;
const LABEL = { same: "unchanged", added: "added", removed: "removed", fold: "" } as const;

function line(row: DiffRow): HTMLElement {
  // The +/- is text, not only colour, so the change reads without colour vision or styles.
  return h("div", { class: `diff-${row.kind}` }, h("span", { class: "mark", "aria-label": LABEL[row.kind] }, MARK[row.kind]), row.text);
}

export function renderDiff(current: unknown, proposed: unknown): HTMLElement {
  const rows = diffRows(current, proposed);
  const added = rows.filter((r) => r.kind === "added").length;
  const removed = rows.filter((r) => r.kind === "removed").length;
  const box = h("div", { class: "diff", role: "region", tabindex: 0, "aria-label": `Change: ${added} lines added, ${removed} removed` });
  for (const row of rows) {
    if (row.kind !== "fold") {
      box.append(line(row));
      continue;
    }
    const button = h("button", { type: "button", class: "fold" }, `Show ${row.text}`);
    button.addEventListener("click", () => button.replaceWith(...row.hidden!.map(line)));
    box.append(button);
  }
  return h("div", {}, h("p", { class: "muted" }, `${added} lines added, ${removed} removed (keys sorted).`), box);
}
