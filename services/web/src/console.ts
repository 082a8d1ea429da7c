// The auditor console: search, one event with its proof checked here, session replay, the
// access review, bundle downloads and the checkpoint history, against the evidence service's
// auditor API. State lives in the URL query, so every view is a link and Back works.
import "./style.css";
import { ApiError, apiUrl, describeError, get, getJson } from "./api";
import { readBootstrap, signInUrl, type Bootstrap } from "./bootstrap";
import { append, clear, details, formatBytes, h, saveFile, table } from "./dom";
import { eventAnswerFromText, nanosToRfc3339, parseExact, pretty, prettyText } from "./json";
import {
  checkEventProof,
  otherSignatures,
  parseCheckpointText,
  parseNote,
  parseVerifierKey,
  verifyNote,
  bytesToHex,
  type VerifierKey,
} from "./proof";

const boot: Bootstrap = readBootstrap();
const main = document.getElementById("main") as HTMLElement;

const SEARCH_FIELDS = [
  ["principal", "Identity (principal)"],
  ["owner", "Owner"],
  ["namespace", "Namespace"],
  ["verb", "Verb"],
  ["resource", "Resource"],
  ["request_id", "Request id"],
  ["session_id", "Session id"],
] as const;
const DECISIONS = ["allow", "deny", "approve"];
const TYPES = [
  "request.received", "request.held", "request.denied", "request.forwarded", "request.withdrawn",
  "response.completed", "approval.posted", "approval.vote", "approval.decided", "grant.issued",
  "grant.revoked", "session.started", "session.data", "session.ended", "audit.accessed",
  "ledger.gap", "ledger.pruned", "bus.refused", "witness.refused",
];
const VERBS = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "exec", "attach", "portforward", "proxy"];
/** Parameters of /v1/events the URL carries. */
const QUERY_KEYS = [...SEARCH_FIELDS.map(([k]) => k), "decision", "type", "from", "to", "after"];
/** Of those, what /v1/bundle filters on. */
const BUNDLE_KEYS = ["principal", "namespace", "request_id", "from", "to"];
const VKEY_STORAGE = "gatehouse.checkpoint-vkey";

// ----- navigation -----

function params(): URLSearchParams {
  return new URLSearchParams(location.search);
}

function href(view: string, values: Record<string, string | undefined> = {}): string {
  const q = new URLSearchParams();
  if (view !== "search") q.set("view", view);
  for (const [k, v] of Object.entries(values)) if (v) q.set(k, v);
  const s = q.toString();
  return `${location.pathname}${s ? `?${s}` : ""}`;
}

function go(url: string): void {
  history.pushState(null, "", url);
  void render();
}

// In-page links go through history, so the page is not reloaded and Back works.
document.addEventListener("click", (e) => {
  const a = (e.target as Element).closest?.("a[data-nav]") as HTMLAnchorElement | null;
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  go(a.getAttribute("href") ?? location.pathname);
});
window.addEventListener("popstate", () => void render());

function link(text: string, url: string, attrs: Record<string, string> = {}): HTMLAnchorElement {
  return h("a", { href: url, "data-nav": "", ...attrs }, text);
}

function showError(where: HTMLElement, e: unknown): void {
  const { title, message, signIn } = describeError(e);
  const fresh = e instanceof ApiError && e.stepUp;
  clear(
    where,
    h(
      "div",
      { class: "notice error", role: "alert" },
      h("h2", {}, title),
      h("p", {}, message),
      signIn ? h("p", {}, h("a", { class: "button", href: signInUrl(boot, { fresh }) }, "Sign in")) : null,
    ),
  );
}

function loading(where: HTMLElement, what: string): void {
  clear(where, h("p", { class: "muted", role: "status" }, `Loading ${what}…`));
}

// ----- the checkpoint key -----

/** The operator's verifier key: from the server's configuration, or pasted by the auditor. */
function verifierKey(): { key: VerifierKey | null; source: string; error?: string } {
  const candidates: [string | null | undefined, string][] = [
    [localStorage.getItem(VKEY_STORAGE), "the key you entered"],
    [boot.checkpoint_vkey, "the key this evidence service is configured with"],
  ];
  for (const [text, source] of candidates) {
    if (!text) continue;
    try {
      return { key: parseVerifierKey(text), source };
    } catch (e) {
      return { key: null, source, error: (e as Error).message };
    }
  }
  return { key: null, source: "none" };
}

function witnessKeys(): VerifierKey[] {
  return (boot.witness_vkeys ?? []).flatMap((text) => {
    try {
      return [parseVerifierKey(text)];
    } catch {
      return [];
    }
  });
}

function keyForm(onChange: () => void): HTMLElement {
  const { key, source, error } = verifierKey();
  const input = h("input", {
    id: "vkey",
    name: "vkey",
    type: "text",
    spellcheck: "false",
    autocomplete: "off",
    placeholder: "name+1a2b3c4d+AQ…",
    value: localStorage.getItem(VKEY_STORAGE) ?? "",
  });
  const form = h(
    "form",
    { class: "inline-form" },
    h("label", { for: "vkey" }, "Checkpoint verifier key (from the operator, out of band)"),
    input,
    h("button", { type: "submit" }, "Use this key"),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (text) localStorage.setItem(VKEY_STORAGE, text);
    else localStorage.removeItem(VKEY_STORAGE);
    onChange();
  });
  return h(
    "details",
    { class: "key", open: !key },
    h("summary", {}, key ? `Checking signatures with ${key.name} (${bytesToHex(key.keyId)}), ${source}` : "No verifier key: signatures are not checked"),
    error ? h("p", { class: "bad" }, `The key (${source}) is not usable: ${error}`) : null,
    form,
  );
}

// ----- search -----

function toLocalInput(rfc3339: string | null): string {
  if (!rfc3339) return "";
  const d = new Date(rfc3339);
  if (Number.isNaN(d.getTime())) return "";
  const local = new Date(d.getTime() - d.getTimezoneOffset() * 60_000);
  return local.toISOString().slice(0, 16);
}

function fromLocalInput(value: string): string {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString().replace(".000Z", "Z");
}

function searchForm(q: URLSearchParams): HTMLFormElement {
  const field = (name: string, label: string, input: HTMLElement) =>
    h("div", { class: "field" }, h("label", { for: `f-${name}` }, label), input);
  const text = (name: string, label: string, list?: string) =>
    field(name, label, h("input", { id: `f-${name}`, name, type: "text", value: q.get(name) ?? "", list, autocomplete: "off" }));
  const select = (name: string, label: string, options: string[]) =>
    field(
      name,
      label,
      h("select", { id: `f-${name}`, name }, h("option", { value: "" }, "any"), options.map((o) => h("option", { value: o, selected: q.get(name) === o }, o))),
    );
  const time = (name: string, label: string) =>
    field(name, label, h("input", { id: `f-${name}`, name, type: "datetime-local", value: toLocalInput(q.get(name)) }));
  const form = h(
    "form",
    { class: "search", role: "search", "aria-label": "Search the ledger" },
    h("datalist", { id: "verbs" }, VERBS.map((v) => h("option", { value: v }))),
    h(
      "div",
      { class: "fields" },
      SEARCH_FIELDS.map(([name, label]) => text(name, label, name === "verb" ? "verbs" : undefined)),
      select("decision", "Decision", DECISIONS),
      select("type", "Event type", TYPES),
      time("from", "From (your local time)"),
      time("to", "To (exclusive)"),
    ),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Search"), link("Clear", href("search"), { class: "button secondary" })),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const values: Record<string, string> = {};
    for (const key of QUERY_KEYS) {
      const raw = String(data.get(key) ?? "").trim();
      values[key] = key === "from" || key === "to" ? fromLocalInput(raw) : raw;
    }
    go(href("search", values));
  });
  return form;
}

interface Found {
  index: unknown;
  received_at: unknown;
  event: Record<string, any> | string;
}

function summary(event: Record<string, any> | string): { type: string; who: string; what: string; decision: string; session?: string } {
  if (typeof event !== "object" || event === null) return { type: "(not JSON)", who: "", what: "", decision: "" };
  const type = String(event.type ?? "").replace(/^dev\.gatehouse\./, "").replace(/\.v1$/, "");
  const d = event.data ?? {};
  const r = d.request ?? {};
  const who = d.identity?.principal ?? d.principal ?? d.approver ?? d.auditor ?? "";
  const object = [r.namespace ?? d.namespace, r.name ?? d.name ?? d.pod].filter(Boolean).join("/");
  const what = [r.verb ?? d.verb, r.resource ?? d.resource, object].filter(Boolean).join(" ");
  const decision = d.decision?.action ?? d.outcome ?? d.reason ?? "";
  const session = type.startsWith("session.") ? String(d.session_id ?? event.subject ?? "") : undefined;
  return { type, who: String(who), what, decision: String(decision), session };
}

async function searchView(): Promise<void> {
  const q = params();
  const results = h("section", { "aria-labelledby": "results-h" });
  clear(main, h("h1", {}, "Search the ledger"), searchForm(q), results, bundleSection(q));
  const api = new URLSearchParams();
  for (const key of QUERY_KEYS) {
    const v = q.get(key);
    if (v) api.set(key, v);
  }
  api.set("limit", "50");
  loading(results, "events");
  try {
    const text = await (await get(apiUrl(boot, "/v1/events", api))).text();
    const answer = parseExact(text) as { events: Found[]; next_after: unknown };
    const rows = answer.events.map((found) => {
      const index = String(found.index);
      const s = summary(found.event);
      let when = "";
      try {
        when = nanosToRfc3339(BigInt(String(found.received_at)));
      } catch {
        when = String(found.received_at);
      }
      return [
        link(index, href("event", { index }), { "aria-label": `Event ${index}` }),
        h("time", { datetime: when }, when.replace("T", " ").replace(/\.\d+Z$/, "Z")),
        s.type,
        s.who,
        s.what,
        s.decision,
        s.session ? link("Replay", href("session", { id: s.session })) : "",
      ];
    });
    const nextAfter = answer.next_after === null || answer.next_after === undefined ? null : String(answer.next_after);
    const pageValues = Object.fromEntries(QUERY_KEYS.map((k) => [k, q.get(k) ?? undefined]));
    clear(
      results,
      h("h2", { id: "results-h" }, q.get("after") ? `Events after index ${q.get("after")}` : "Events"),
      rows.length === 0
        ? h("p", { class: "muted" }, "No events match.")
        : table("Events matching the search, in ledger order", ["Index", "Received (UTC)", "Type", "Identity", "Request", "Decision", "Session"], rows),
      h(
        "nav",
        { class: "pager", "aria-label": "Pages" },
        q.get("after") ? link("First page", href("search", { ...pageValues, after: undefined })) : null,
        nextAfter ? link("Next page", href("search", { ...pageValues, after: nextAfter }), { rel: "next" }) : null,
      ),
    );
  } catch (e) {
    showError(results, e);
  }
}

// ----- bundle -----

function bundleSection(q: URLSearchParams): HTMLElement {
  const api = new URLSearchParams();
  for (const key of BUNDLE_KEYS) {
    const v = q.get(key);
    if (v) api.set(key, v);
  }
  const ignored = QUERY_KEYS.filter((k) => k !== "after" && !BUNDLE_KEYS.includes(k) && q.get(k));
  const since = h("input", { id: "since", name: "since", type: "number", min: 1, inputmode: "numeric" });
  const progress = h("progress", { id: "bundle-progress", hidden: true });
  const statusLine = h("p", { role: "status", "aria-live": "polite" });
  const command = h("div", {});
  const button = h("button", { type: "submit" }, "Download bundle");
  const form = h(
    "form",
    { class: "inline-form" },
    h("label", { for: "since" }, "Prove it extends the checkpoint I hold of size (optional)"),
    since,
    button,
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const p = new URLSearchParams(api);
    if (since.value) p.set("since", since.value);
    void downloadBundle(apiUrl(boot, "/v1/bundle", p), since.value, { button, progress, statusLine, command });
  });
  return h(
    "section",
    { class: "card", "aria-labelledby": "bundle-h" },
    h("h2", { id: "bundle-h" }, "Evidence bundle"),
    h(
      "p",
      {},
      api.toString()
        ? `A signed bundle of the events matching ${[...api.keys()].join(", ")}.`
        : "A signed bundle of the whole ledger (set identity, namespace, request id or a time range to narrow it).",
    ),
    ignored.length ? h("p", { class: "muted" }, `Bundles do not filter on ${ignored.join(", ")}; those filters are left out.`) : null,
    form,
    progress,
    statusLine,
    command,
  );
}

async function downloadBundle(
  url: string,
  since: string,
  ui: { button: HTMLButtonElement; progress: HTMLProgressElement; statusLine: HTMLElement; command: HTMLElement },
): Promise<void> {
  ui.button.disabled = true;
  ui.progress.hidden = false;
  ui.progress.removeAttribute("value");
  ui.statusLine.textContent = "Preparing the bundle (the server writes and signs it first)…";
  clear(ui.command);
  try {
    const response = await get(url, "application/gzip");
    const total = Number(response.headers.get("content-length") ?? "") || 0;
    if (total) ui.progress.max = total;
    const name =
      /filename="?([^";]+)"?/.exec(response.headers.get("content-disposition") ?? "")?.[1] ?? "gatehouse-evidence.tar.gz";
    const chunks: Uint8Array[] = [];
    let received = 0;
    const reader = response.body!.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      received += value.length;
      if (total) ui.progress.value = received;
      ui.statusLine.textContent = `${formatBytes(received)} received${total ? ` of ${formatBytes(total)}` : ""}`;
    }
    saveFile(name, chunks as BlobPart[], "application/gzip");
    ui.statusLine.textContent = `Saved ${name} (${formatBytes(received)}).`;
    const key = verifierKey().key;
    const keyArg = key ? `'${key.name}+${bytesToHex(key.keyId)}+${vkeyBase64(key)}'` : "'OPERATOR-VERIFIER-KEY'";
    const cmd = `gatehouse verify ${name} --key ${keyArg}${since ? ` --trusted checkpoint-${since}.txt` : ""}`;
    append(ui.command, [
      h("p", {}, "Verify it offline with the operator's key", since ? ` and the checkpoint of size ${since} you saved (Checkpoints page):` : ":"),
      copyable(cmd, "Verification command"),
    ]);
  } catch (e) {
    showError(ui.statusLine, e);
  } finally {
    ui.button.disabled = false;
    ui.progress.hidden = true;
  }
}

function vkeyBase64(key: VerifierKey): string {
  let binary = String.fromCharCode(key.type);
  for (const b of key.publicKey) binary += String.fromCharCode(b);
  return btoa(binary);
}

function copyable(text: string, label: string): HTMLElement {
  const pre = h("pre", { class: "copyable", tabindex: 0, "aria-label": label }, h("code", {}, text));
  const button = h("button", { type: "button", class: "secondary" }, "Copy");
  button.addEventListener("click", () => {
    void navigator.clipboard?.writeText(text).then(
      () => (button.textContent = "Copied"),
      () => (button.textContent = "Copy failed: select the text"),
    );
  });
  return h("div", { class: "copy-block" }, pre, button);
}

// ----- one event -----

async function eventView(): Promise<void> {
  const q = params();
  const index = q.get("index") ?? "";
  clear(main, h("p", {}, link("← Search", href("search"))), h("h1", {}, `Event ${index}`));
  const body = h("div", {});
  main.append(body);
  if (!/^[0-9]+$/.test(index)) {
    showError(body, new Error("The event index must be a whole number."));
    return;
  }
  loading(body, "the event and its proof");
  const api = new URLSearchParams();
  if (q.get("size")) api.set("size", q.get("size")!);
  try {
    const text = await (await get(apiUrl(boot, `/v1/events/${index}`, api))).text();
    const { answer, raw } = eventAnswerFromText(text);
    const renderProof = () => {
      const { key } = verifierKey();
      const report = checkEventProof(answer, key);
      const eventText = report.event ? prettyText(new TextDecoder().decode(report.event)) : null;
      const session = raw["event"] && typeof raw["event"] === "object" ? summary(raw["event"] as Record<string, any>).session : undefined;
      clear(
        body,
        h(
          "div",
          { class: `notice ${report.verified ? "ok" : "error"}`, role: "status" },
          h("h2", {}, report.verified ? "Proof verified in your browser" : "Proof not verified"),
          h(
            "ul",
            { class: "steps" },
            report.steps.map((s) =>
              h("li", { class: s.status }, h("strong", {}, `${s.status === "ok" ? "✓" : s.status === "failed" ? "✗" : "–"} ${s.name}: `), s.detail),
            ),
          ),
        ),
        keyForm(renderProof),
        details([
          ["Index", String(answer.index)],
          ["Stream sequence", String(answer.stream_sequence)],
          ["Received", nanosToRfc3339(answer.received_at)],
          ["Ledger format", answer.ledger_format ?? "gatehouse.ledger.v1 (not stated)"],
          ["Pruned", answer.pruned_at !== null ? nanosToRfc3339(answer.pruned_at) : ""],
          ["Session", session ? link(`Replay session ${session}`, href("session", { id: session })) : ""],
        ]),
        h("h2", {}, "Event"),
        eventText === null
          ? h("p", { class: "muted" }, "Retention pruned this event; its hashes remain in the ledger.")
          : h("pre", { class: "json", tabindex: 0, "aria-label": "The event, as hashed" }, h("code", {}, eventText)),
        h("h2", {}, "Hashes"),
        details([
          ["Previous entry hash", h("code", {}, answer.previous_hash)],
          ["Entry hash", h("code", {}, answer.entry_hash)],
          ["Leaf hash", h("code", {}, answer.leaf_hash)],
          ["Tree size", String(answer.size)],
          ["Root", h("code", {}, answer.root)],
        ]),
        h("h2", {}, `Inclusion proof (${answer.inclusion.length} hash${answer.inclusion.length === 1 ? "" : "es"}, sibling first)`),
        h("ol", { class: "hashes", start: 0 }, answer.inclusion.map((x) => h("li", {}, h("code", {}, x)))),
        h("h2", {}, "Signed checkpoint"),
        answer.checkpoint ? copyable(answer.checkpoint, "The signed checkpoint") : h("p", { class: "muted" }, "None signed at this size yet."),
        h("details", {}, h("summary", {}, "The answer as received"), h("pre", { class: "json" }, h("code", {}, pretty(raw)))),
      );
    };
    renderProof();
  } catch (e) {
    showError(body, e);
  }
}

// ----- session replay -----

async function sessionView(): Promise<void> {
  const id = params().get("id") ?? "";
  const body = h("div", {});
  clear(main, h("p", {}, link("← Search", href("search"))), h("h1", {}, `Session ${id}`), body);
  if (!/^[A-Za-z0-9_-]{1,128}$/.test(id)) {
    showError(body, new Error("A session id is 1 to 128 letters, digits, '-' or '_'."));
    return;
  }
  loading(body, "the recording");
  try {
    const url = apiUrl(boot, `/v1/sessions/${encodeURIComponent(id)}/replay`);
    const response = await get(url, "application/x-asciicast");
    const missing = response.headers.get("gatehouse-missing-chunks");
    const cast = await response.text();
    const player = h("div", { class: "player", "aria-label": "Terminal recording player" });
    clear(
      body,
      missing ? h("p", { class: "notice error", role: "alert" }, `${missing} chunks of this session are missing from the ledger; the replay skips them.`) : null,
      h("p", { class: "muted" }, "Space plays and pauses; arrow keys seek. Input is not shown."),
      player,
      h("p", {}, h("a", { href: url, download: `${id}.cast` }, "Download the recording (asciicast v2)")),
      h("details", {}, h("summary", {}, "Show the recording as text"), h("pre", { class: "json", tabindex: 0 }, h("code", {}, cast))),
    );
    const { mountPlayer } = await import("./replay");
    mountPlayer(cast, player);
  } catch (e) {
    showError(body, e);
  }
}

// ----- access review -----

async function reviewView(): Promise<void> {
  const q = params();
  const form = h(
    "form",
    { class: "search", "aria-label": "Period" },
    h(
      "div",
      { class: "fields" },
      h("div", { class: "field" }, h("label", { for: "r-from" }, "From"), h("input", { id: "r-from", name: "from", type: "date", value: q.get("from") ?? "" })),
      h("div", { class: "field" }, h("label", { for: "r-to" }, "To (exclusive)"), h("input", { id: "r-to", name: "to", type: "date", value: q.get("to") ?? "" })),
    ),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Show the review")),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const d = new FormData(form);
    go(href("review", { from: String(d.get("from") ?? ""), to: String(d.get("to") ?? "") }));
  });
  const body = h("div", {});
  clear(main, h("h1", {}, "Access review"), form, body);
  const api = new URLSearchParams();
  for (const k of ["from", "to"]) if (q.get(k)) api.set(k, q.get(k)!);
  const download = (format: string) => {
    const p = new URLSearchParams(api);
    p.set("format", format);
    return h("a", { href: apiUrl(boot, "/v1/reports/access-review", p), download: "" }, format.toUpperCase());
  };
  loading(body, "the review");
  try {
    const p = new URLSearchParams(api);
    p.set("format", "json");
    const review = await getJson<AccessReview>(apiUrl(boot, "/v1/reports/access-review", p));
    clear(body, h("p", { class: "downloads" }, "Download: ", download("html"), " · ", download("csv"), " · ", download("json")), renderReview(review));
  } catch (e) {
    showError(body, e);
  }
}

interface Counts { requests: number; allowed: number; held: number; denied: number; forwarded: number; error_responses: number }
interface AccessReview {
  from: string | null; to: string | null; generated_at: string | null; policy_source: string | null;
  events_read: number; events_skipped: number; events_unreadable: number; requests: number; unidentified_requests: number;
  identities: IdentityReview[]; notes: string[];
}
interface Vote { approver: string; vote: string; channel: string; via: string; at: string; comment: string | null }
interface IdentityReview {
  principal: string; registered: boolean; owner: string | null; team: string | null; purpose: string | null; groups: string[];
  first_seen: string; last_seen: string; totals: Counts;
  activity: (Counts & { verb: string; resource: string; namespace: string })[];
  rules_used: { rule: string; requests: number }[];
  holds: { request_id: string; approval_id: string | null; held_at: string; verb: string; resource: string; namespace: string; name: string; rule: string | null; approver_groups: string[]; quorum: number | null; stated_reason: string | null; outcome: string; decided_at: string | null; decided_by: Vote[]; grant_id: string | null; note: string | null }[];
  denials: { request_id: string; time: string; verb: string; resource: string; namespace: string; name: string; reason: string; rule: string | null; status: number | null; message: string }[];
  denial_counts: { reason: string; rule: string | null; count: number }[];
  grants: { grant_id: string; request_id: string; approval_id: string; rule: string; verb: string; resource: string; namespace: string; issued_at: string; expires_at: string; approved_by: string[]; revoked_at: string | null; revoked_by: string | null; revoke_reason: string | null }[];
  unused_grants: { rule: string; action: string; description: string | null; applies_via: string; verbs: string; resources: string; namespaces: string }[] | null;
}

function requestLink(id: string): HTMLElement {
  return link(id, href("search", { request_id: id }));
}

function renderReview(r: AccessReview): HTMLElement {
  const counts = (c: Counts) => [c.requests, c.allowed, c.held, c.denied, c.forwarded, c.error_responses];
  const section = h(
    "div",
    { class: "review" },
    details([
      ["Period", `${r.from ?? "the first event"} to ${r.to ?? "the last event"}`],
      ["Generated", r.generated_at ?? ""],
      ["Policy", r.policy_source ?? "not given (unused grants are not assessed)"],
      ["Events read", String(r.events_read)],
      ["Requests", String(r.requests)],
      ["Unidentified requests", String(r.unidentified_requests)],
      ["Events skipped / unreadable", `${r.events_skipped} / ${r.events_unreadable}`],
    ]),
    r.notes.length ? h("div", { class: "notice error", role: "note" }, h("ul", {}, r.notes.map((n) => h("li", {}, n)))) : null,
    h("h2", {}, "Summary"),
    table(
      "Requests per identity",
      ["Identity", "Owner", "Team", "Requests", "Allowed", "Held", "Denied", "Forwarded", "Error responses", "Unused grants"],
      r.identities.map((i) => [
        h("a", { href: `#id-${encodeURIComponent(i.principal)}` }, i.principal),
        i.owner ?? "",
        i.team ?? "",
        ...counts(i.totals),
        i.unused_grants === null ? "–" : i.unused_grants.length,
      ]),
    ),
  );
  for (const i of r.identities) {
    const s = h(
      "section",
      { class: "identity", id: `id-${encodeURIComponent(i.principal)}`, "aria-label": i.principal },
      h("h2", {}, i.principal),
      details([
        ["Registered", i.registered ? "yes" : "no (all its requests are denied)"],
        ["Owner", i.owner ?? ""],
        ["Team", i.team ?? ""],
        ["Purpose", i.purpose ?? ""],
        ["Groups", i.groups.join(", ")],
        ["First seen", i.first_seen],
        ["Last seen", i.last_seen],
      ]),
      h("h3", {}, "Activity"),
      table(`Activity of ${i.principal}`, ["Verb", "Resource", "Namespace", "Requests", "Allowed", "Held", "Denied", "Forwarded", "Error responses"],
        i.activity.map((a) => [a.verb, a.resource, a.namespace, ...counts(a)])),
      i.rules_used.length ? [h("h3", {}, "Rules used"), table(`Rules that decided requests of ${i.principal}`, ["Rule", "Requests"], i.rules_used.map((u) => [u.rule, u.requests]))] : null,
      i.holds.length
        ? [h("h3", {}, "Holds"), table(`Holds of ${i.principal}`, ["Held at", "Request", "Verb", "Resource", "Namespace/name", "Rule", "Reason given", "Outcome", "Decided by", "Grant"],
            i.holds.map((x) => [x.held_at, requestLink(x.request_id), x.verb, x.resource, [x.namespace, x.name].filter(Boolean).join("/"), x.rule ?? "", x.stated_reason ?? "",
              `${x.outcome}${x.decided_at ? ` at ${x.decided_at}` : ""}${x.note ? ` (${x.note})` : ""}`,
              h("ul", { class: "plain" }, x.decided_by.map((v) => h("li", {}, `${v.approver} ${v.vote} (${v.channel} ${v.via}, ${v.at})${v.comment ? `: “${v.comment}”` : ""}`))),
              x.grant_id ?? ""]))]
        : null,
      i.denials.length
        ? [h("h3", {}, "Denials"), table(`Denials of ${i.principal}`, ["Time", "Request", "Verb", "Resource", "Namespace/name", "Reason", "Rule", "Status", "Message"],
            i.denials.map((d) => [d.time, requestLink(d.request_id), d.verb, d.resource, [d.namespace, d.name].filter(Boolean).join("/"), d.reason, d.rule ?? "", d.status ?? "", d.message])),
          table(`Denials of ${i.principal} by reason`, ["Reason", "Rule", "Count"], i.denial_counts.map((d) => [d.reason, d.rule ?? "", d.count]))]
        : null,
      i.grants.length
        ? [h("h3", {}, "Grants"), table(`Grants opened for ${i.principal}`, ["Grant", "Request", "Rule", "Verb", "Resource", "Namespace", "Issued", "Expires", "Approved by", "Revoked"],
            i.grants.map((g) => [g.grant_id, requestLink(g.request_id), g.rule, g.verb, g.resource, g.namespace, g.issued_at, g.expires_at, g.approved_by.join(", "),
              g.revoked_at ? `${g.revoked_at} by ${g.revoked_by ?? "?"}${g.revoke_reason ? `: ${g.revoke_reason}` : ""}` : ""]))]
        : null,
      i.unused_grants && i.unused_grants.length
        ? [h("h3", {}, "Unused grants"), table(`Rules that could apply to ${i.principal} but decided none of its requests`, ["Rule", "Action", "Applies via", "Verbs", "Resources", "Namespaces", "Description"],
            i.unused_grants.map((u) => [u.rule, u.action, u.applies_via, u.verbs, u.resources, u.namespaces, u.description ?? ""]))]
        : null,
    );
    section.append(s);
  }
  return section;
}

// ----- checkpoints -----

interface CheckpointPage { checkpoints: { size: number; note: string; witnessed?: string | null }[]; next_after: number | null }

async function checkpointsView(): Promise<void> {
  const q = params();
  const body = h("div", {});
  const rerender = () => void checkpointsView();
  clear(
    main,
    h("h1", {}, "Checkpoints"),
    h("p", {}, "Each checkpoint is the ledger's size and Merkle root, signed. Save one now and pass it to ",
      h("code", {}, "gatehouse verify --trusted"), " later: a bundle must then prove the ledger still extends it."),
    keyForm(rerender),
    body,
  );
  const api = new URLSearchParams();
  if (q.get("after")) api.set("after", q.get("after")!);
  api.set("limit", "100");
  loading(body, "checkpoints");
  try {
    const page = await getJson<CheckpointPage>(apiUrl(boot, "/v1/checkpoints", api));
    const { key } = verifierKey();
    const witnesses = witnessKeys();
    const items = page.checkpoints.map((c) => {
      let status: HTMLElement;
      let extra: HTMLElement | null = null;
      try {
        const cp = parseCheckpointText(parseNote(c.note).text);
        const check = key ? verifyNote(c.note, key) : null;
        status = h(
          "p",
          { class: check === null ? "muted" : check.ok ? "good" : "bad" },
          check === null ? "Signature not checked (no verifier key)." : check.ok ? `✓ Signed by ${key!.name}.` : `✗ ${check.reason}`,
          ` Root ${bytesToHex(cp.root)}.`,
        );
        // Witnesses cosign the witnessed checkpoint (the same leaves in a SHA-256 tree), kept
        // beside the ledger's own; older evidence services send none.
        const others = otherSignatures(c.witnessed ?? c.note, key, witnesses);
        if (others.length) {
          extra = h("div", {}, h("h3", {}, "Other signatures (witness cosignatures)"),
            table(`Cosignatures of the checkpoint of ${c.size}`, ["Name", "Key id", "Time", "Checked"],
              others.map((o) => [o.name, o.keyId, o.timestamp !== undefined ? new Date(Number(o.timestamp) * 1000).toISOString() : "",
                o.verified === undefined ? "no witness key given" : o.verified ? "✓ verifies" : "✗ does not verify"])));
        }
      } catch (e) {
        status = h("p", { class: "bad" }, `Malformed: ${(e as Error).message}`);
      }
      const save = h("button", { type: "button", class: "secondary" }, "Download");
      save.addEventListener("click", () => saveFile(`checkpoint-${c.size}.txt`, [c.note], "text/plain"));
      return h(
        "li",
        { class: "card" },
        h("h2", {}, `Size ${c.size}`),
        status,
        copyable(c.note, `The signed checkpoint of ${c.size} entries`),
        c.witnessed ? h("details", {}, h("summary", {}, "The witnessed checkpoint (cosigned by witnesses)"),
          copyable(c.witnessed, `The witnessed checkpoint of ${c.size} entries`)) : null,
        h("p", {}, save, " ", link("Bundle proving it extends this", href("search")), ` (use “size ${c.size}” on the search page)`),
        extra,
      );
    });
    clear(
      body,
      items.length ? h("ol", { class: "plain" }, items) : h("p", { class: "muted" }, "No checkpoint has been signed yet."),
      h("nav", { class: "pager", "aria-label": "Pages" },
        q.get("after") ? link("First page", href("checkpoints")) : null,
        page.next_after !== null ? link("Next page", href("checkpoints", { after: String(page.next_after) }), { rel: "next" }) : null),
    );
  } catch (e) {
    showError(body, e);
  }
}

// ----- frame -----

const VIEWS: Record<string, [string, () => Promise<void>]> = {
  search: ["Search", searchView],
  event: ["Event", eventView],
  session: ["Session", sessionView],
  review: ["Access review", reviewView],
  checkpoints: ["Checkpoints", checkpointsView],
};

function frame(): void {
  const nav = document.getElementById("nav");
  if (nav) {
    clear(nav,
      h("ul", {},
        h("li", {}, link("Search", href("search"))),
        h("li", {}, link("Access review", href("review"))),
        h("li", {}, link("Checkpoints", href("checkpoints")))));
  }
  const user = document.getElementById("user");
  if (user) {
    clear(user, boot.user ? `Signed in as ${boot.user.name ? `${boot.user.name} (${boot.user.principal})` : boot.user.principal}` : h("a", { href: signInUrl(boot) }, "Sign in"));
  }
}

async function render(): Promise<void> {
  const view = params().get("view") ?? "search";
  const [title, show] = VIEWS[view] ?? VIEWS["search"]!;
  document.title = `${title} · Gatehouse auditor console`;
  for (const a of document.querySelectorAll<HTMLAnchorElement>("#nav a")) {
    const target = new URL(a.href).searchParams.get("view") ?? "search";
    if (target === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  await show();
  // Focus moves to the new heading, so screen readers announce the view.
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: true });
  }
}

frame();
void render();
