import { resolve } from "node:path";
import { defineConfig } from "vitest/config";

// Two pages, hashed asset names under /assets/ (served immutable by gatehouse_web), and a
// manifest so the Rust side finds the shared stylesheet for server-rendered pages.
export default defineConfig({
  base: "/",
  build: {
    manifest: true,
    target: "es2022",
    // Inlined assets would be data: URLs, which the CSP does not allow for scripts.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    rollupOptions: {
      input: {
        console: resolve(import.meta.dirname, "console.html"),
        approve: resolve(import.meta.dirname, "approve.html"),
        style: resolve(import.meta.dirname, "src/style.css"),
      },
    },
  },
  test: {
    include: ["src/**/*.test.ts"],
    testTimeout: 30_000,
  },
});
