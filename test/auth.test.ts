import { execFile } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { promisify } from "node:util";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { exportJWK } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BackupService } from "../gen/backup/v1/backup_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../gen/health/v1/health_pb.js";
import { createDatabase, createFixture, mintToken, serviceEnv, type TestService } from "./helpers.js";

const run = promisify(execFile);
const fx = createFixture("auth");
const service = fx.service;

async function codeOf(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
    return { code: "OK", message: "" };
  } catch (e) {
    if (!(e instanceof ConnectError)) throw e;
    return { code: Code[e.code], message: e.rawMessage };
  }
}

function b64url(o: unknown): string {
  return Buffer.from(JSON.stringify(o)).toString("base64url");
}

let hs: TestService;

beforeAll(async () => {
  await createDatabase(fx.target);
  hs = await service();
});

afterAll(() => fx.cleanup());

describe("HS256 (JWT_SECRET)", () => {
  it("refuses calls without a valid token: UNAUTHENTICATED", async () => {
    const now = Math.floor(Date.now() / 1000);
    const cases: [string, string | null, RegExp][] = [
      ["no token", null, /missing authorization header/],
      ["garbage", "not.a.jwt", /malformed|invalid/],
      ["expired", await mintToken({ sub: "a", expiresIn: -3600 }), /expired/],
      ["wrong key", await mintToken({ sub: "a", secret: "another-secret-that-is-long-enough-for-hs256" }), /signature/],
      ["alg none", `${b64url({ alg: "none", typ: "JWT" })}.${b64url({ sub: "a", role: "admin", exp: now + 600 })}.`, /algorithm|invalid|malformed/],
      ["no exp", await mintToken({ sub: "a", expiresIn: null }), /exp/],
      ["no sub", await mintToken({}), /sub/],
    ];
    for (const [name, token, message] of cases) {
      const r = await codeOf(hs.clientWith(token).getStats({}));
      expect(r.code, name).toBe("Unauthenticated");
      expect(r.message, name).toMatch(message);
    }
    const basic = createClient(
      BackupService,
      createGrpcTransport({
        baseUrl: hs.url,
        interceptors: [(next) => (req) => (req.header.set("authorization", "Basic dXNlcjpwYXNz"), next(req))],
      }),
    );
    expect((await codeOf(basic.getStats({}))).code).toBe("Unauthenticated");
  });

  it("refuses a valid token without an admin role: PERMISSION_DENIED", async () => {
    for (const role of ["viewer", "", ["user"], null, 1]) {
      const token = await mintToken({ sub: "bob", role });
      const r = await codeOf(hs.clientWith(token).getStats({}));
      expect(r.code, String(role)).toBe("PermissionDenied");
      expect(r.message).toMatch(/must be admin or superadmin/);
    }
  });

  it("lets admin, superadmin and a role list holding admin through", async () => {
    for (const role of ["admin", "superadmin", ["user", "admin"]]) {
      const token = await mintToken({ sub: "carol", role });
      expect((await codeOf(hs.clientWith(token).getStats({}))).code, String(role)).toBe("OK");
    }
  });

  it("audits denied calls with the outcome and, when known, who", async () => {
    await codeOf(hs.clientWith(null).listBackups({}));
    await codeOf(hs.clientWith(await mintToken({ sub: "mallory", role: "user", username: "Mallory" })).createBackup({}));
    const { events } = await hs.client.listAuditEvents({ pageSize: 500 });
    expect(events).toContainEqual(
      expect.objectContaining({ action: "ListBackups", outcome: "UNAUTHENTICATED", actor: "", clientAddress: "127.0.0.1" }),
    );
    expect(events).toContainEqual(
      expect.objectContaining({ action: "CreateBackup", outcome: "PERMISSION_DENIED", actor: "mallory", actorUsername: "Mallory" }),
    );
    const mine = await hs.client.listAuditEvents({ actor: "Mallory" });
    expect(mine.events.length).toBeGreaterThan(0);
    expect(mine.events.every((e) => e.actor === "mallory")).toBe(true);
  });

  it("leaves health open without a token", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: hs.url }));
    const res = await health.check({ service: "backup.v1.BackupService" });
    expect(res.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
  });
});

describe("issuer and audience", () => {
  it("are checked when configured", async () => {
    const s = await service({ JWT_ISSUER: "https://issuer.example", JWT_AUDIENCE: "backup-service" });
    const plain = await mintToken({ sub: "a" });
    expect((await codeOf(s.clientWith(plain).getStats({}))).code).toBe("Unauthenticated");
    const { SignJWT } = await import("jose");
    const good = await new SignJWT({ role: "admin" })
      .setProtectedHeader({ alg: "HS256" })
      .setSubject("a")
      .setIssuer("https://issuer.example")
      .setAudience("backup-service")
      .setExpirationTime("10m")
      .sign(new TextEncoder().encode("test-secret-that-is-long-enough-for-hs256!"));
    expect((await codeOf(s.clientWith(good).getStats({}))).code).toBe("OK");
  });
});

describe("asymmetric keys (JWT_PUBLIC_KEY_FILE)", () => {
  it("RS256 PEM: accepts RS256, refuses an HS256 token made with the public key as secret", async () => {
    const dir = await fx.tempDir();
    const { publicKey, privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const pem = publicKey.export({ type: "spki", format: "pem" }).toString();
    await writeFile(path.join(dir, "pub.pem"), pem);
    const s = await service({ JWT_SECRET: "", JWT_PUBLIC_KEY_FILE: path.join(dir, "pub.pem") });

    const good = await mintToken({ sub: "rsa-user", alg: "RS256", key: privateKey });
    expect((await codeOf(s.clientWith(good).getStats({}))).code).toBe("OK");

    const confused = await mintToken({ sub: "attacker", alg: "HS256", secret: pem });
    const r = await codeOf(s.clientWith(confused).getStats({}));
    expect(r.code).toBe("Unauthenticated");
    expect(r.message).toMatch(/algorithm/);

    const hs256 = await mintToken({ sub: "a" });
    expect((await codeOf(s.clientWith(hs256).getStats({}))).code).toBe("Unauthenticated");

    const other = generateKeyPairSync("rsa", { modulusLength: 2048 });
    const wrongKey = await mintToken({ sub: "a", alg: "RS256", key: other.privateKey });
    expect((await codeOf(s.clientWith(wrongKey).getStats({}))).code).toBe("Unauthenticated");
  });

  it("JWKS with ES256 and Ed25519 keys: accepts both", async () => {
    const dir = await fx.tempDir();
    const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const ed = generateKeyPairSync("ed25519");
    const jwks = { keys: [{ ...(await exportJWK(ec.publicKey)), kid: "ec" }, { ...(await exportJWK(ed.publicKey)), kid: "ed" }] };
    await writeFile(path.join(dir, "jwks.json"), JSON.stringify(jwks));
    const s = await service({ JWT_SECRET: "", JWT_PUBLIC_KEY_FILE: path.join(dir, "jwks.json") });
    const { SignJWT } = await import("jose");
    for (const [alg, key, kid] of [
      ["ES256", ec.privateKey, "ec"],
      ["EdDSA", ed.privateKey, "ed"],
    ] as const) {
      const token = await new SignJWT({ role: "admin" })
        .setProtectedHeader({ alg, kid })
        .setSubject("k")
        .setExpirationTime("5m")
        .sign(key);
      expect((await codeOf(s.clientWith(token).getStats({}))).code, alg).toBe("OK");
    }
  });
});

describe("zero-config start", () => {
  it("generates a 0600 secret in DATA_DIR, and `npm run token` mints tokens for it", async () => {
    const dataDir = await fx.tempDir();
    const s = await service({ JWT_SECRET: "" }, dataDir);
    const secretFile = path.join(dataDir, "jwt-secret");
    expect((await stat(secretFile)).mode & 0o777).toBe(0o600);

    const env = { ...process.env, ...serviceEnv("unused", "unused", dataDir), JWT_SECRET: "" };
    const { stdout } = await run("npm", ["run", "token", "--", "--sub", "dana", "--role", "admin", "--ttl", "10m"], { env });
    const lines = stdout.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    expect((await codeOf(s.clientWith(lines[0]!).getStats({}))).code).toBe("OK");

    // A second start reuses the same secret: tokens stay valid.
    await s.close();
    const again = await service({ JWT_SECRET: "" }, dataDir);
    expect((await codeOf(again.clientWith(lines[0]!).getStats({}))).code).toBe("OK");
  });
});
