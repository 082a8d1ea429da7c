// The browser harness: the system Chromium through playwright-core, a fresh profile per run,
// screenshots on request, and every console error or page error collected (a test fails on any).
import { createHash, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * SHA-256 SPKI fingerprints of every certificate in a PEM file (the test CA, and the leaf if it
 * is there too), for --ignore-certificate-errors-spki-list: Chromium then accepts a chain
 * holding one of those keys, and still checks everything else (host name, expiry) as usual.
 */
export function spkiFingerprints(pemFile) {
  const pem = readFileSync(pemFile, "utf8");
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error(`${pemFile} holds no certificate`);
  return blocks.map((block) => {
    const der = new X509Certificate(block).publicKey.export({ type: "spki", format: "der" });
    return createHash("sha256").update(der).digest("base64");
  });
}

/**
 * Starts Chromium with a fresh user-data-dir. `GATEHOUSE_CA_FILE` (a PEM of the services' CA)
 * is trusted through its SPKI fingerprint; HTTPS errors are otherwise not ignored.
 */
export async function launch({ screenshots = process.env.SCREENSHOT_DIR, viewport = { width: 1280, height: 900 } } = {}) {
  const profile = mkdtempSync(join(tmpdir(), "gatehouse-chromium-"));
  const args = [...FLAGS];
  if (process.env.GATEHOUSE_CA_FILE) {
    args.push(`--ignore-certificate-errors-spki-list=${spkiFingerprints(process.env.GATEHOUSE_CA_FILE).join(",")}`);
  }
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args,
    viewport,
    ignoreHTTPSErrors: false,
    acceptDownloads: true,
  });
  const errors = [];
  const allowed = [];
  const watch = (page) => {
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(`${page.url()}: console: ${m.text()}`);
    });
    page.on("pageerror", (e) => errors.push(`${page.url()}: page error: ${e.message}`));
  };
  context.on("page", watch);
  context.pages().forEach(watch);
  if (screenshots) mkdirSync(screenshots, { recursive: true });
  return {
    context,
    errors,
    /** A new page at `url`, loaded. */
    async open(url, options = {}) {
      const page = await context.newPage();
      if (options.viewport) await page.setViewportSize(options.viewport);
      await page.goto(url, { waitUntil: "load" });
      return page;
    },
    /** A full-page screenshot named `name`.png, when a directory was given. */
    async screenshot(page, name) {
      if (screenshots) await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
    },
    /** Errors a test provokes on purpose (an API's 404 is logged as a failed load). */
    allow(pattern) {
      allowed.push(pattern);
    },
    /** Throws when any page logged an error not allowed. */
    assertNoErrors() {
      const left = errors.filter((e) => !allowed.some((p) => p.test(e)));
      if (left.length) throw new Error(`browser errors:\n${left.join("\n")}`);
    },
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
