// Smoke test of the built pages (services/web, `npm run build` → dist, or WEB_DIST): a tiny
// server gives them the same headers as gatehouse_web (CSP included) and canned API answers
// from schemas/vectors, and the pages must render, verify the vector proof in the browser, play
// the vector recording, and log no error. Run: ./install && npm run smoke
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { readFileSync, existsSync } from "node:fs";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { launch } from "./lib.mjs";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const DIST = process.env.WEB_DIST ?? join(ROOT, "services/web/dist");
const VECTORS = join(ROOT, "schemas/vectors");
const vector = (name) => JSON.parse(readFileSync(join(VECTORS, name), "utf8"));

// As gatehouse_web::CONSOLE_CSP and PAGE_CSP (services/web/src/lib.rs).
const CONSOLE_CSP =
  "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
const PAGE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
const TYPES = { ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".wasm": "application/wasm" };

const keys = vector("keys.json");
const checkpoint = vector("checkpoint.json");
const bundle = vector("bundle.json");

// Entry C of ledger.md in the tree of 3 (checkpoint.json): its proof is [root of size 2].
// Written as text: received_at is beyond 2^53 and must reach the page exactly.
const EVENT_2 = `{"index":2,"stream_sequence":3,"received_at":1795000000000000001,
"previous_hash":"04c83a9629073e518537e6d6379bc1927bc69736e7646af323e25af75bf6391c",
"entry_hash":"5817d2bada6e2d14db9831933f3bd57aef5a5d16466ffd2df3ddbc1ade5dcaaa",
"leaf_hash":"e2b13ef71737d163f8b31dabbe51303f0d748405067b188f095155997b1ca1b9",
"ledger_format":"gatehouse.ledger.v2","event":{"b":2},"event_base64":"eyJiIjoyfQ==","pruned_at":null,
"size":3,"root":"f04a4ebb491852bf52ae7f8d1fa2ded9b516827e591445ac2df0af914d604baf",
"inclusion":["bbc3e66eff19dfcd5faadf66d5970e23d97f5b8be5d0a9c45619b74741bd7aa4"],
"checkpoint":${JSON.stringify(checkpoint.note)}}`;

const SESSION_EVENT = JSON.parse(bundle.entries[3].event);
const SEARCH = `{"events":[
{"index":2,"stream_sequence":3,"received_at":1795000000000000001,"event":{"b":2}},
{"index":3,"stream_sequence":4,"received_at":1795000000000000002,"event":${JSON.stringify(SESSION_EVENT)}}],"next_after":3}`;

const HOLD = {
  approval_id: "01HOLD",
  request_id: "01REQ",
  state: "pending",
  principal: "ci-deployer",
  owner: "alice@example.com",
  team: "platform",
  verb: "patch",
  resource: "deployments",
  api_group: "apps",
  namespace: "apps",
  name: "web",
  reason: "scale for the launch",
  rule: "prod-changes",
  approver_groups: ["sre"],
  quorum: 2,
  expires_at: new Date(Date.now() + 600_000).toISOString(),
  votes: [{ approver: "bob@example.com", vote: "approve", channel: "slack", via: "button", at: "2026-11-22T16:00:00Z", comment: "ok" }],
  decided_at: null,
  grant_id: null,
  body: { content_type: "application/merge-patch+json", masked: false, value: { spec: { replicas: 5 } } },
  change: {
    current: { kind: "Deployment", metadata: { name: "web", namespace: "apps" }, spec: { replicas: 2, template: { spec: { containers: [{ name: "web", image: "web:1" }] } } } },
    proposed: { kind: "Deployment", metadata: { name: "web", namespace: "apps" }, spec: { replicas: 5, template: { spec: { containers: [{ name: "web", image: "web:1" }] } } } },
    patch_type: "application/merge-patch+json",
  },
  viewer: { principal: "carol@example.com", can_vote: true },
};

const REVIEW = {
  from: "2026-11-01T00:00:00Z", to: "2026-12-01T00:00:00Z", generated_at: "2026-12-01T00:00:01Z", policy_source: null,
  events_read: 10, events_skipped: 0, events_unreadable: 0, requests: 3, unidentified_requests: 0, notes: [],
  identities: [{
    principal: "ci-deployer", registered: true, owner: "alice@example.com", team: "platform", purpose: "deploys", groups: ["deployers"],
    first_seen: "2026-11-02T10:00:00Z", last_seen: "2026-11-03T10:00:00Z",
    totals: { requests: 3, allowed: 2, held: 1, denied: 1, forwarded: 2, error_responses: 0 },
    activity: [{ verb: "patch", resource: "deployments.apps", namespace: "apps", requests: 3, allowed: 2, held: 1, denied: 1, forwarded: 2, error_responses: 0 }],
    rules_used: [{ rule: "prod-changes", requests: 3 }], holds: [], denials: [], denial_counts: [], grants: [], unused_grants: null,
  }],
};

function bootstrap(html, value) {
  const json = JSON.stringify(value).replace(/</g, "\\u003c").replace(/>/g, "\\u003e").replace(/&/g, "\\u0026");
  return html.replace('<script type="application/json" id="bootstrap">{}</script>', `<script type="application/json" id="bootstrap">${json}</script>`);
}

let server;
let base;
const posted = [];

function send(res, status, type, body, csp = PAGE_CSP) {
  res.writeHead(status, {
    "content-type": type,
    "content-security-policy": csp,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
  });
  res.end(body);
}

before(async () => {
  assert.ok(existsSync(join(DIST, "console.html")), `no build in ${DIST}: run npm run build in services/web (or set WEB_DIST)`);
  server = createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    const p = url.pathname;
    const json = (body, status = 200) => send(res, status, "application/json", typeof body === "string" ? body : JSON.stringify(body));
    if (p.startsWith("/assets/")) {
      const file = normalize(join(DIST, p));
      if (!file.startsWith(join(DIST, "assets")) || !existsSync(file)) return send(res, 404, "text/plain", "no such asset");
      return send(res, 200, TYPES[extname(file)] ?? "application/octet-stream", readFileSync(file), "default-src 'none'; frame-ancestors 'none'");
    }
    if (p === "/console/") {
      const html = bootstrap(readFileSync(join(DIST, "console.html"), "utf8"), { user: { principal: "auditor@example.com" }, checkpoint_vkey: keys.verifier_key });
      return send(res, 200, "text/html; charset=utf-8", html, CONSOLE_CSP);
    }
    if (p === "/holds/01HOLD") {
      const html = bootstrap(readFileSync(join(DIST, "approve.html"), "utf8"), { user: { principal: "carol@example.com" }, csrf_token: "csrf-123", hold_id: "01HOLD" });
      return send(res, 200, "text/html; charset=utf-8", html);
    }
    if (p === "/v1/events") return json(SEARCH);
    if (p === "/v1/events/2") return json(EVENT_2);
    if (p === "/v1/events/7") return json({ error: "entry 7 is not in the tree of 3 entries" }, 404);
    if (p === "/v1/checkpoints") return json({ checkpoints: [{ size: 3, note: checkpoint.note }], next_after: null });
    if (p === "/v1/reports/access-review") return json(REVIEW);
    if (p === "/v1/sessions/01JSESSION/replay") return send(res, 200, "application/x-asciicast", bundle.recording);
    if (p === "/v1/approvals/01HOLD") return json(HOLD);
    if (p === "/v1/approvals/01HOLD/vote" && req.method === "POST") {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        posted.push({ csrf: req.headers["x-csrf-token"], body: JSON.parse(body) });
        json({ counted: true, repeat: false, refusal: null, hold: { ...HOLD, votes: [...HOLD.votes, { approver: "carol@example.com", vote: "approve", channel: "api", via: "command", at: "2026-11-22T16:01:00Z", comment: "fine" }] } });
      });
      return;
    }
    if (p === "/favicon.ico") return send(res, 204, "text/plain", "");
    return json({ error: "no such path" }, 404);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${server.address().port}`;
});

after(() => server?.close());

async function noHorizontalScroll(page) {
  const [scroll, width] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(scroll <= width, `the page is ${scroll}px wide in a ${width}px viewport`);
}

test("the console renders, verifies the vector proof, replays the vector session", async () => {
  const browser = await launch();
  try {
    const page = await browser.open(`${base}/console/`);
    await page.getByRole("table").first().waitFor();
    assert.match(await page.textContent("main"), /session\.started/);
    await browser.screenshot(page, "console-search");

    // Filters go to the URL; Back returns to the previous search.
    await page.fill("#f-principal", "ci-deployer");
    await page.click("button[type=submit]");
    await page.waitForURL(/principal=ci-deployer/);
    await page.goBack();
    await page.waitForURL((u) => !u.search.includes("principal"));

    await page.getByRole("link", { name: "Event 2" }).click();
    await page.getByText("Proof verified in your browser").waitFor();
    const steps = await page.locator(".steps li").allTextContents();
    assert.equal(steps.length, 5, steps.join("\n"));
    assert.ok(steps.every((s) => s.startsWith("✓")), steps.join("\n"));
    assert.match(await page.textContent("main"), /2026-11-18T11:06:40\.000000001Z/);
    await browser.screenshot(page, "console-event");

    browser.allow(/view=event&index=7: console: Failed to load resource: .* 404/);
    await page.goto(`${base}/console/?view=event&index=7`);
    await page.getByRole("alert").getByText("entry 7 is not in the tree").waitFor();

    await page.goto(`${base}/console/?view=session&id=01JSESSION`);
    await page.locator(".player .ap-player, .player .ap-wrapper").first().waitFor({ timeout: 15_000 });
    await browser.screenshot(page, "console-session");

    await page.goto(`${base}/console/?view=checkpoints`);
    await page.getByText(`✓ Signed by ${keys.name}.`).waitFor();
    await page.goto(`${base}/console/?view=review&from=2026-11-01&to=2026-12-01`);
    await page.getByRole("heading", { name: "ci-deployer" }).waitFor();

    // A phone: nothing wider than the screen (tables scroll on their own).
    const phone = await browser.open(`${base}/console/?view=event&index=2`, { viewport: { width: 375, height: 740 } });
    await phone.getByText("Proof verified in your browser").waitFor();
    await noHorizontalScroll(phone);
    await browser.screenshot(phone, "console-event-phone");
    browser.assertNoErrors();
  } finally {
    await browser.close();
  }
});

test("the approver page shows the hold and its diff, and votes with the CSRF token", async () => {
  const browser = await launch();
  try {
    const page = await browser.open(`${base}/holds/01HOLD`, { viewport: { width: 375, height: 740 } });
    await page.getByRole("heading", { name: /Approve or deny: patch deployments\.apps apps\/web/ }).waitFor();
    assert.match(await page.locator('[role="timer"]').textContent(), /m \d+s left/);
    assert.deepEqual(await page.locator(".diff-removed").allTextContents(), ['-    "replicas": 2,']);
    assert.deepEqual(await page.locator(".diff-added").allTextContents(), ['+    "replicas": 5,']);
    await noHorizontalScroll(page);
    await browser.screenshot(page, "approve-phone");
    await page.getByLabel("Comment (recorded with your vote)").fill("fine");
    await page.getByRole("button", { name: "Approve" }).click();
    await page.getByText("Your approve was counted.").waitFor();
    assert.deepEqual(posted.at(-1), { csrf: "csrf-123", body: { vote: "approve", comment: "fine" } });
    browser.assertNoErrors();
  } finally {
    await browser.close();
  }
});
