import { createPrivateKey, createPublicKey, randomBytes, type KeyObject } from "node:crypto";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import {
  createLocalJWKSet,
  errors as joseErrors,
  jwtVerify,
  SignJWT,
  type JSONWebKeySet,
  type JWK,
  type JWTPayload,
} from "jose";
import type { Config } from "../config.js";

/** Where the zero-config secret lives, inside DATA_DIR. */
export const GENERATED_SECRET_FILE = "jwt-secret";

/** The key material the service verifies tokens with (and, when it can, signs them). */
export interface JwtKeys {
  /** Human-readable description of where the key came from (no key material). */
  source: string;
  /** Accepted `alg` values: pinned to the key type, never taken from the token. */
  algorithms: string[];
  verify(token: string): Promise<JWTPayload>;
  /** Signs a token; undefined when only a public key is configured and no private key. */
  sign?: (claims: JWTPayload, ttlSeconds: number) => Promise<string>;
  /** True when the secret was generated during this call. */
  generated: boolean;
}

export class KeyConfigError extends Error {
  override name = "KeyConfigError";
}

function algorithmOf(key: KeyObject, setting: string): string {
  switch (key.asymmetricKeyType) {
    case "rsa":
      return "RS256";
    case "ec": {
      const curve = key.asymmetricKeyDetails?.namedCurve;
      if (curve === "prime256v1" || curve === "P-256") return "ES256";
      if (curve === "secp384r1" || curve === "P-384") return "ES384";
      if (curve === "secp521r1" || curve === "P-521") return "ES512";
      throw new KeyConfigError(`${setting}: unsupported EC curve ${curve ?? "unknown"}`);
    }
    case "ed25519":
      return "EdDSA";
    default:
      throw new KeyConfigError(`${setting}: unsupported key type ${key.asymmetricKeyType ?? "unknown"} (use RSA, EC or Ed25519)`);
  }
}

function algorithmOfJwk(jwk: JWK, setting: string): string {
  if (jwk.alg) return jwk.alg;
  if (jwk.kty === "RSA") return "RS256";
  if (jwk.kty === "EC") {
    let key: KeyObject;
    try {
      key = createPublicKey({ key: jwk as never, format: "jwk" });
    } catch {
      throw new KeyConfigError(`${setting}: an EC key of the JWKS is not a valid JWK (crv, x and y are needed)`);
    }
    return algorithmOf(key, setting);
  }
  if (jwk.kty === "OKP" && jwk.crv === "Ed25519") return "EdDSA";
  throw new KeyConfigError(`${setting}: unsupported JWK (kty ${jwk.kty ?? "missing"})`);
}

async function readSetting(file: string, setting: string): Promise<string> {
  try {
    return await readFile(file, "utf8");
  } catch (err) {
    throw new KeyConfigError(`${setting}: cannot read the file (${(err as NodeJS.ErrnoException).code ?? "error"})`);
  }
}

/** Reads the generated secret, creating it (mode 0600) if this is the first start. */
async function generatedSecret(dataDir: string): Promise<{ secret: Uint8Array; generated: boolean; file: string }> {
  const file = path.join(dataDir, GENERATED_SECRET_FILE);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  try {
    const secret = randomBytes(48).toString("base64url");
    // "wx": if another process created it first, we read theirs.
    await writeFile(file, secret + "\n", { flag: "wx", mode: 0o600 });
    return { secret: new TextEncoder().encode(secret), generated: true, file };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
  }
  const text = (await readFile(file, "utf8")).trim();
  if (text.length < 32) throw new KeyConfigError(`the generated secret in ${file} is too short; delete it to make a new one`);
  return { secret: new TextEncoder().encode(text), generated: false, file };
}

const TOKEN_CACHE_SIZE = 1000;

/**
 * Remembers tokens already verified, until their `exp`: a client sends the
 * same token with every call, and checking its signature again is the
 * costliest part of a small call (measured: about a third of the service's
 * CPU under 50 concurrent callers). Keys never change while the service runs.
 */
function rememberVerified(verify: (token: string) => Promise<JWTPayload>): (token: string) => Promise<JWTPayload> {
  const verified = new Map<string, { payload: JWTPayload; until: number }>();
  return async (token) => {
    const now = Date.now();
    const hit = verified.get(token);
    if (hit && now < hit.until) return hit.payload;
    if (hit) verified.delete(token);
    const payload = await verify(token);
    if (typeof payload.exp === "number") {
      if (verified.size >= TOKEN_CACHE_SIZE) verified.delete(verified.keys().next().value!);
      verified.set(token, { payload, until: payload.exp * 1000 });
    }
    return payload;
  };
}

/** Loads the key the configuration names, or the zero-config generated secret. */
export async function loadJwtKeys(config: Config): Promise<JwtKeys> {
  const keys = await loadKeys(config);
  return { ...keys, verify: rememberVerified(keys.verify) };
}

async function loadKeys(config: Config): Promise<JwtKeys> {
  const { jwt } = config;
  const verifyOptions = (algorithms: string[]) => ({
    algorithms,
    issuer: jwt.issuer,
    audience: jwt.audience,
    requiredClaims: ["exp"],
    clockTolerance: 5,
  });

  const hmac = (secret: Uint8Array, source: string, generated: boolean): JwtKeys => ({
    source,
    algorithms: ["HS256"],
    generated,
    verify: async (token) => (await jwtVerify(token, secret, verifyOptions(["HS256"]))).payload,
    sign: (claims, ttl) => signWith(claims, ttl, "HS256", secret),
  });

  if (jwt.secret !== undefined) return hmac(new TextEncoder().encode(jwt.secret), "JWT_SECRET", false);
  if (jwt.secretFile !== undefined) {
    const text = (await readSetting(jwt.secretFile, "JWT_SECRET_FILE")).trim();
    if (Buffer.byteLength(text) < 32) throw new KeyConfigError("JWT_SECRET_FILE: the secret must be at least 32 bytes long");
    return hmac(new TextEncoder().encode(text), "JWT_SECRET_FILE", false);
  }
  if (jwt.publicKeyFile !== undefined) {
    const text = await readSetting(jwt.publicKeyFile, "JWT_PUBLIC_KEY_FILE");
    let signer: JwtKeys["sign"];
    if (jwt.privateKeyFile !== undefined) {
      const pem = await readSetting(jwt.privateKeyFile, "JWT_PRIVATE_KEY_FILE");
      let privateKey: KeyObject;
      try {
        privateKey = createPrivateKey(pem);
      } catch {
        throw new KeyConfigError("JWT_PRIVATE_KEY_FILE: not a PEM private key");
      }
      const alg = algorithmOf(privateKey, "JWT_PRIVATE_KEY_FILE");
      signer = (claims, ttl) => signWith(claims, ttl, alg, privateKey);
    }
    if (text.trimStart().startsWith("{")) {
      let parsed: JSONWebKeySet | JWK;
      try {
        parsed = JSON.parse(text) as JSONWebKeySet | JWK;
      } catch {
        throw new KeyConfigError("JWT_PUBLIC_KEY_FILE: neither a PEM public key nor valid JWKS JSON");
      }
      const set: JSONWebKeySet = "keys" in parsed ? parsed : { keys: [parsed as JWK] };
      // JSON says nothing of the shape: {"keys": {}} or {"keys": [null]} must be refused
      // here, naming the setting, not fail as a TypeError further on.
      if (!Array.isArray(set.keys)) throw new KeyConfigError("JWT_PUBLIC_KEY_FILE: the JWKS's \"keys\" must be a list of keys");
      if (set.keys.some((k: unknown) => typeof k !== "object" || k === null || Array.isArray(k))) {
        throw new KeyConfigError("JWT_PUBLIC_KEY_FILE: each key of the JWKS must be a JSON object (a JWK)");
      }
      if (set.keys.length === 0) throw new KeyConfigError("JWT_PUBLIC_KEY_FILE: the JWKS holds no keys");
      const algorithms = [...new Set(set.keys.map((k) => algorithmOfJwk(k, "JWT_PUBLIC_KEY_FILE")))];
      if (algorithms.some((a) => a.startsWith("HS"))) {
        throw new KeyConfigError("JWT_PUBLIC_KEY_FILE: symmetric keys do not belong in a public key file");
      }
      const jwks = createLocalJWKSet(set);
      return {
        source: "JWT_PUBLIC_KEY_FILE (JWKS)",
        algorithms,
        generated: false,
        verify: async (token) => (await jwtVerify(token, jwks, verifyOptions(algorithms))).payload,
        sign: signer,
      };
    }
    let publicKey: KeyObject;
    try {
      publicKey = createPublicKey(text);
    } catch {
      throw new KeyConfigError("JWT_PUBLIC_KEY_FILE: neither a PEM public key nor valid JWKS JSON");
    }
    const alg = algorithmOf(publicKey, "JWT_PUBLIC_KEY_FILE");
    return {
      source: "JWT_PUBLIC_KEY_FILE",
      algorithms: [alg],
      generated: false,
      verify: async (token) => (await jwtVerify(token, publicKey, verifyOptions([alg]))).payload,
      sign: signer,
    };
  }
  const { secret, generated, file } = await generatedSecret(config.dataDir);
  return hmac(secret, `generated secret in ${file}`, generated);

  async function signWith(claims: JWTPayload, ttlSeconds: number, alg: string, key: Uint8Array | KeyObject) {
    let builder = new SignJWT(claims).setProtectedHeader({ alg, typ: "JWT" }).setIssuedAt().setExpirationTime(
      Math.floor(Date.now() / 1000) + ttlSeconds,
    );
    if (jwt.issuer) builder = builder.setIssuer(jwt.issuer);
    if (jwt.audience) builder = builder.setAudience(jwt.audience);
    return builder.sign(key);
  }
}

/** Why a token was refused, in words safe to send back. */
export function describeTokenError(err: unknown): string {
  if (err instanceof joseErrors.JWTExpired) return "token has expired";
  if (err instanceof joseErrors.JWTClaimValidationFailed) return `token claim check failed: ${err.message}`;
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return "token algorithm is not accepted";
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return "token signature is invalid";
  if (err instanceof joseErrors.JWKSNoMatchingKey) return "no key matches the token";
  if (err instanceof joseErrors.JWTInvalid || err instanceof joseErrors.JWSInvalid) return "token is malformed";
  return "token is invalid";
}
