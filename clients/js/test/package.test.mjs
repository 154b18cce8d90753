// The npm package: package.json points at files that exist, the package
// resolves by its own name through "exports", and gateway-client.d.ts
// declares exactly what gateway-client.js exports (`npm run check-types`
// type-checks the declarations themselves; it needs TypeScript).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, existsSync } from "node:fs";

const dir = new URL("../", import.meta.url);
const pkg = JSON.parse(readFileSync(new URL("package.json", dir), "utf8"));

test("package.json names files that exist and are packed", () => {
  assert.equal(pkg.type, "module");
  assert.equal(pkg.license, "Apache-2.0");
  assert.match(pkg.version, /^\d+\.\d+\.\d+$/);
  const exp = pkg.exports["."];
  for (const f of [pkg.main, pkg.module, pkg.types, exp.types, exp.default]) {
    assert.ok(existsSync(new URL(f, dir)), f);
    assert.ok(pkg.files.includes(f.replace(/^\.\//, "")), `${f} is in "files"`);
  }
  assert.equal(pkg.scripts.test, "node --test test/");
});

test("the package resolves by its name", async () => {
  const byName = await import(pkg.name);
  const byPath = await import("../gateway-client.js");
  assert.equal(byName.GatewayClient, byPath.GatewayClient);
});

test("the declarations cover exactly the runtime exports", async () => {
  const dts = readFileSync(new URL(pkg.types, dir), "utf8");
  const declared = [...dts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)].map((m) => m[1]).sort();
  const runtime = Object.keys(await import("../gateway-client.js")).sort();
  assert.deepEqual(declared, runtime);
  // The declared public methods exist on the class.
  const { GatewayClient } = await import("../gateway-client.js");
  const cls = dts.slice(dts.indexOf("export declare class GatewayClient"));
  const methods = [...new Set([...cls.matchAll(/^  (\w+)\(/gm)].map((m) => m[1]))];
  assert.ok(methods.length >= 7, methods.join());
  for (const m of methods) assert.equal(typeof GatewayClient.prototype[m], "function", m);
  // The close reasons and error codes are declared with the runtime's names.
  const { CloseReason, ErrorCode } = await import("../gateway-client.js");
  for (const name of CloseReason) assert.ok(dts.includes(`"${name}",`), name);
  for (const [code, name] of Object.entries(ErrorCode)) assert.ok(dts.includes(`readonly ${code}: "${name}";`), name);
});
