// Single-use tokens for the streaming URLs, as kubelet's streaming server issues them:
// 8 characters of base64url from the CSPRNG, valid for one minute, at most 1000 in flight.
import { randomBytes } from "node:crypto";
import { status } from "@grpc/grpc-js";

export const TOKEN_TTL_MS = 60_000;
export const MAX_TOKENS_IN_FLIGHT = 1000;

/** Too many unused tokens: the Get* call answers RESOURCE_EXHAUSTED (kubelet: HTTP 429 semantics). */
export class TokensExhaustedError extends Error {
  readonly grpcCode = status.RESOURCE_EXHAUSTED;
  constructor(limit: number) {
    super(`streaming: ${limit} stream requests already waiting for a client; retry later`);
    this.name = "TokensExhaustedError";
  }
}

export interface TokenCacheOptions {
  ttlMs: number;
  maxInFlight: number;
  now: () => number;
}

export class TokenCache<T> {
  private readonly opts: TokenCacheOptions;
  // Insertion order is expiry order (one TTL for all), so expired entries sit at the front.
  private readonly entries = new Map<string, { value: T; expires: number }>();

  constructor(options: Partial<TokenCacheOptions> = {}) {
    this.opts = {
      ttlMs: TOKEN_TTL_MS,
      maxInFlight: MAX_TOKENS_IN_FLIGHT,
      now: Date.now,
      ...options,
    };
  }

  get size(): number {
    this.sweep();
    return this.entries.size;
  }

  /** Stores a request and returns its token. Throws TokensExhaustedError when full. */
  insert(value: T): string {
    this.sweep();
    if (this.entries.size >= this.opts.maxInFlight)
      throw new TokensExhaustedError(this.opts.maxInFlight);
    for (;;) {
      // 6 random bytes are exactly 8 base64url characters.
      const token = randomBytes(6).toString("base64url");
      if (this.entries.has(token)) continue;
      this.entries.set(token, { value, expires: this.opts.now() + this.opts.ttlMs });
      return token;
    }
  }

  /** Takes the request for a token; undefined when unknown, used or expired. */
  consume(token: string): T | undefined {
    this.sweep();
    const e = this.entries.get(token);
    if (!e) return undefined;
    this.entries.delete(token);
    return e.value;
  }

  private sweep(): void {
    const now = this.opts.now();
    for (const [token, e] of this.entries) {
      if (e.expires > now) break;
      this.entries.delete(token);
    }
  }
}
