import { describe, expect, it } from "vitest";
import { diffRows } from "./diff-view";

describe("diffRows", () => {
  it("shows a changed field with its context and folds the rest", () => {
    const current = { spec: { replicas: 2, a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8 }, kind: "Deployment" };
    const proposed = { kind: "Deployment", spec: { a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, replicas: 5 } };
    const rows = diffRows(current, proposed);
    expect(rows.filter((r) => r.kind === "removed").map((r) => r.text)).toEqual(['    "replicas": 2']);
    expect(rows.filter((r) => r.kind === "added").map((r) => r.text)).toEqual(['    "replicas": 5']);
    const fold = rows.find((r) => r.kind === "fold");
    expect(fold?.hidden?.length).toBeGreaterThan(0);
  });

  it("a new object is all additions", () => {
    const rows = diffRows(null, { a: 1 });
    expect(rows.every((r) => r.kind === "added")).toBe(true);
  });
});
