// End to end in Chromium against `gatehouse up` (driven by tests/tests/browser.rs, which starts
// the stack, makes the activity and the held delete, and checks what follows):
//   the auditor signs in, searches, sees an event's proof verified in the browser, replays a
//   session, downloads a bundle; Dave is refused by both pages; Bob opens the hold from Slack's
//   link with an hour-old sign-in, is asked to sign in again (step-up), and approves.
// Environment: CONSOLE_URL, HOLD_URL, SESSION_ID, PASSWORDS (the demo passwords file),
// DOWNLOADS (where the bundle goes), SCREENSHOT_DIR (optional).
// Progress goes to stderr; stdout carries one request to the driver, "BACKDATE", answered "OK"
// on stdin once Bob's sign-in at the issuer is an hour old.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { launch } from "./lib.mjs";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const CONSOLE = `${env("CONSOLE_URL")}/console/`;
const HOLD = env("HOLD_URL");
const SESSION_ID = env("SESSION_ID");
const DOWNLOADS = env("DOWNLOADS");
const passwords = Object.fromEntries(
  readFileSync(env("PASSWORDS"), "utf8")
    .split("\n")
    .filter((l) => l.includes(": ") && !l.startsWith("#"))
    .map((l) => l.split(": ").map((s) => s.trim())),
);
const TIMEOUT = 30_000;
const step = (text) => process.stderr.write(`step: ${text}\n`);

const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
async function askDriver(request) {
  process.stdout.write(`${request}\n`);
  const { value } = await lines.next();
  assert.equal(value?.trim(), "OK", `the driver answered ${value} to ${request}`);
}

/** On the issuer's sign-in form: signs in as `email`. */
async function signIn(page, email) {
  await page.getByLabel("Email").waitFor({ timeout: TIMEOUT });
  await page.getByLabel("Email").fill(email);
  await page.getByLabel("Password").fill(passwords[email]);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForLoadState("load");
}

async function auditor(browser) {
  step("the auditor signs in to the console");
  const page = await browser.open(CONSOLE);
  assert.ok(!page.url().startsWith(CONSOLE), `a signed-out visitor stays at ${page.url()}`);
  await signIn(page, "auditor@example.com");
  await page.getByText("Signed in as").waitFor({ timeout: TIMEOUT });

  step("searches by identity");
  await page.getByLabel("Identity (principal)").fill("ci-deployer");
  await page.getByRole("button", { name: "Search" }).click();
  const first = page.getByRole("link", { name: /^Event \d+$/ }).first();
  await first.waitFor({ timeout: TIMEOUT });
  await browser.screenshot(page, "console-search");

  step("opens an event: its proof is verified in the browser");
  await first.click();
  await page.getByRole("heading", { name: "Proof verified in your browser" }).waitFor({ timeout: TIMEOUT });
  await browser.screenshot(page, "console-event");

  step("replays the session");
  await page.goto(`${CONSOLE}?view=session&id=${encodeURIComponent(SESSION_ID)}`);
  await page.getByLabel("Terminal recording player").waitFor({ timeout: TIMEOUT });
  await page.locator(".ap-player, .ap-wrapper").first().waitFor({ timeout: TIMEOUT });
  await browser.screenshot(page, "console-replay");

  step("reads the access review and the checkpoints");
  await page.goto(`${CONSOLE}?view=review`);
  await page.getByRole("button", { name: "Show the review" }).click();
  await page.getByText("ci-deployer").first().waitFor({ timeout: TIMEOUT });
  await browser.screenshot(page, "console-review");
  await page.goto(`${CONSOLE}?view=checkpoints`);
  await page.getByText("gatehouse.local/ledger").first().waitFor({ timeout: TIMEOUT });
  await browser.screenshot(page, "console-checkpoints");

  step("downloads a bundle of ci-deployer's requests");
  await page.goto(`${CONSOLE}?principal=ci-deployer`);
  const button = page.getByRole("button", { name: "Download bundle" });
  await button.waitFor({ timeout: TIMEOUT });
  const [download] = await Promise.all([page.waitForEvent("download", { timeout: 60_000 }), button.click()]);
  await download.saveAs(join(DOWNLOADS, "bundle.tar.gz"));
  await page.getByText("gatehouse verify").first().waitFor({ timeout: TIMEOUT });
  await browser.screenshot(page, "console-bundle");
  await page.close();
}

async function dave(browser) {
  // The refusals are 403s, which Chromium logs as failed loads.
  browser.allow(/status of 403/);
  step("Dave, neither auditor nor approver, is refused by the console");
  const page = await browser.open(CONSOLE);
  await signIn(page, "dave@example.com");
  await page.getByRole("heading", { name: "Not an auditor" }).waitFor({ timeout: TIMEOUT });
  assert.match(await page.content(), /dave@example\.com/);
  await browser.screenshot(page, "console-refused");

  step("and by the approver page");
  const hold = await browser.open(HOLD);
  await hold.waitForLoadState("load");
  if (await hold.getByLabel("Password").isVisible().catch(() => false)) await signIn(hold, "dave@example.com");
  await hold.getByRole("heading", { name: "Not an approver" }).waitFor({ timeout: TIMEOUT });
  await browser.screenshot(hold, "approve-refused");
}

async function bob(browser) {
  browser.allow(/status of 403/);
  step("Bob signs in at the issuer (through the console, which refuses him: he audits nothing)");
  const page = await browser.open(CONSOLE);
  await signIn(page, "bob@example.com");
  await page.getByRole("heading", { name: "Not an auditor" }).waitFor({ timeout: TIMEOUT });
  await askDriver("BACKDATE");

  step("opens the hold from Slack: signed in silently, with an hour-old sign-in");
  const hold = await browser.open(HOLD);
  await hold.getByRole("heading", { name: "Sign in again to vote" }).waitFor({ timeout: TIMEOUT });
  await browser.screenshot(hold, "approve-step-up");

  step("signs in again: the issuer asks for his password");
  await hold.getByRole("link", { name: "Sign in again" }).click();
  await signIn(hold, "bob@example.com");
  const approve = hold.getByRole("button", { name: "Approve" });
  await approve.waitFor({ timeout: TIMEOUT });
  assert.equal(await hold.getByRole("heading", { name: "Sign in again to vote" }).count(), 0);
  await hold.getByLabel("Comment (recorded with your vote)").fill("payments v1 is retired; checked with the owner");
  await browser.screenshot(hold, "approve-page");
  await approve.click();
  await hold.getByText("Your approve was counted.").waitFor({ timeout: TIMEOUT });
  await browser.screenshot(hold, "approve-approved");

  step("the page reads well on a phone");
  await hold.setViewportSize({ width: 390, height: 844 });
  await hold.reload();
  await hold.getByRole("heading", { name: /Hold|Approve or deny/ }).first().waitFor({ timeout: TIMEOUT });
  const wide = await hold.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  assert.equal(wide, false, "the approver page scrolls sideways on a phone");
  await browser.screenshot(hold, "approve-phone");
}

// Each person in a browser of their own, as they would be.
for (const person of [auditor, dave, bob]) {
  const browser = await launch();
  try {
    await person(browser);
    browser.assertNoErrors();
  } catch (e) {
    const pages = browser.context.pages();
    if (pages.length) await browser.screenshot(pages[pages.length - 1], `failed-${person.name}`).catch(() => {});
    process.stderr.write(`failed: ${person.name}: ${e.stack ?? e}\n`);
    for (const p of pages) process.stderr.write(`  page ${p.url()}\n`);
    await browser.close();
    process.exit(1);
  }
  await browser.close();
}
step("done");
process.exit(0);
