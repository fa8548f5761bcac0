// The protocol in the browser: a small exact msgpack codec, genesis parsing and the receipt
// verifier of SPEC section 6 (the same checks as ledger/receipts.py). No DOM here: app.js
// draws, this file decides. Exposed as window.Ledger.
"use strict";
(function () {
  const enc = new TextEncoder();
  const utf8 = new TextDecoder("utf-8", { fatal: true });
  const RECORD_TAG = enc.encode("ledger.record.v1\0");
  const VOTE_TAG = enc.encode("ledger.vote.v1\0");
  const PRECOMMIT = 2;
  const BODY_KEYS = ["chain", "type", "subject", "payload", "ts", "nonce", "signer"];
  const SEALED_BODY_KEYS = ["chain", "type", "subject", "payload_digest", "ts", "nonce", "signer"];
  // SPEC section 9 and 10: reserved types, signature domains of approvals and joins.
  const CONFIG_TYPE = "ledger.config", REDACT_TYPE = "ledger.redact", RESERVED = "ledger.";
  const CONFIG_TAG = enc.encode("ledger.config.v1\0"), JOIN_TAG = enc.encode("ledger.join.v1\0");
  const REDACT_TAG = enc.encode("ledger.redact.v1\0");
  const PAYLOAD_TAG = enc.encode("ledger.payload.v1\0"), SALT_SIZE = 32; // SPEC section 10
  const WITNESS_TAG = enc.encode("ledger.witness.v1\0"); // SPEC section 11
  const DEFAULT_GOVERNANCE_ROLE = "admin", MAX_TOTAL_POWER = 2n ** 62n;
  const TYPE_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
  // SPEC sections 2 and 9 (ledger/records.py): 64 KiB payloads, 1 MiB for a ledger.config one.
  const MAX_PAYLOAD = 64 * 1024, MAX_CONFIG_PAYLOAD = 1024 * 1024, BODY_OVERHEAD = 2048;
  const MAX_BODY = MAX_PAYLOAD + BODY_OVERHEAD, MAX_CONFIG_BODY = MAX_CONFIG_PAYLOAD + BODY_OVERHEAD;
  const MAX_ENVELOPE = MAX_CONFIG_BODY + 128;
  const payloadLimit = (type) => (type === CONFIG_TYPE ? MAX_CONFIG_PAYLOAD : MAX_PAYLOAD);
  const U64 = (1n << 64n) - 1n, I64 = (1n << 63n) - 1n;

  class VerifyError extends Error {}
  const fail = (msg) => { throw new VerifyError(msg); };

  // ---- bytes ----
  const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  function unhex(text, what, len) {
    if (typeof text !== "string") fail(`${what}: expected a hex string`);
    if (!/^([0-9a-f]{2})*$/.test(text)) fail(`${what}: hex must be lowercase with no separators`);
    const out = new Uint8Array(text.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(text.substr(2 * i, 2), 16);
    if (len !== undefined && out.length !== len) fail(`${what}: expected ${len} bytes of hex, got ${out.length}`);
    return out;
  }
  function b64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }
  function unb64(text, what) {
    if (typeof text !== "string") fail(`${what}: expected a base64 string`);
    let bin;
    try { bin = atob(text); } catch (e) { fail(`${what}: not valid base64`); }
    const out = Uint8Array.from(bin, (c) => c.charCodeAt(0));
    if (b64(out) !== text) fail(`${what}: not canonical base64`);
    return out;
  }
  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  }
  const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  async function sha256(bytes) { return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)); }

  // ---- msgpack encoder: str, non-negative int, bin, nil, bool, array (what is hashed/signed) ----
  function encode(value) {
    const out = [];
    const be = (n, size) => { // big-endian unsigned of `size` bytes (n: BigInt)
      for (let i = size - 1; i >= 0; i--) out.push(Number((n >> BigInt(8 * i)) & 0xffn));
    };
    const head = (fix, fixMax, codes, n) => { // fixed form, else 8/16/32-bit length forms
      if (fix !== null && n <= fixMax) out.push(fix | n);
      else if (codes[0] !== null && n < 0x100) { out.push(codes[0]); be(BigInt(n), 1); }
      else if (n < 0x10000) { out.push(codes[1]); be(BigInt(n), 2); }
      else { out.push(codes[2]); be(BigInt(n), 4); }
    };
    const walk = (v) => {
      if (v === null) out.push(0xc0);
      else if (v === false || v === true) out.push(v ? 0xc3 : 0xc2);
      else if (typeof v === "number" || typeof v === "bigint") {
        if (typeof v === "number" && !Number.isSafeInteger(v)) throw new TypeError(`cannot encode ${v}`);
        const n = BigInt(v);
        if (n < 0n || n > U64) throw new TypeError(`cannot encode integer ${n}`);
        if (n < 0x80n) out.push(Number(n));
        else if (n < 0x100n) { out.push(0xcc); be(n, 1); }
        else if (n < 0x10000n) { out.push(0xcd); be(n, 2); }
        else if (n < 0x100000000n) { out.push(0xce); be(n, 4); }
        else { out.push(0xcf); be(n, 8); }
      } else if (typeof v === "string") {
        const b = enc.encode(v);
        head(0xa0, 31, [0xd9, 0xda, 0xdb], b.length);
        for (const x of b) out.push(x);
      } else if (v instanceof Uint8Array) {
        head(null, 0, [0xc4, 0xc5, 0xc6], v.length);
        for (const x of v) out.push(x);
      } else if (Array.isArray(v)) {
        head(0x90, 15, [null, 0xdc, 0xdd], v.length);
        v.forEach(walk);
      } else throw new TypeError(`cannot encode ${typeof v}`);
    };
    walk(value);
    return Uint8Array.from(out);
  }

  // ---- msgpack decoder: every type but ext; maps become Map (a repeated key is an error) ----
  // The rules of ledger/encoding.py (docs/protocol.md, "Decoding"): no ext type in any form,
  // containers nest at most `maxDepth` levels (the outermost array or map counts 1; a record
  // body allows 65, its payload 64), and a repeated map key by msgpack identity is an error:
  // 1, true and 1.0 are different keys; floats compare by value (0.0 is -0.0, every NaN is
  // one key); arrays in order, maps as sets of pairs.
  // `spans`, if given, receives the encoded size of each value of a top-level map.
  const MAX_DEPTH = 64;
  function decode(bytes, what = "msgpack", spans = null, maxDepth = MAX_DEPTH) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let pos = 0, depth = 0;
    const need = (n) => { if (pos + n > bytes.length) fail(`${what}: truncated`); };
    const uint = (size) => {
      need(size);
      let n = 0n;
      for (let i = 0; i < size; i++) n = (n << 8n) | BigInt(bytes[pos + i]);
      pos += size;
      return n;
    };
    const int = (n) => (n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n);
    const take = (n) => { need(n); const b = bytes.slice(pos, pos + n); pos += n; return b; };
    const str = (n) => { try { return utf8.decode(take(n)); } catch (e) { if (e instanceof VerifyError) throw e; fail(`${what}: invalid UTF-8 in str`); } };
    const arr = (n) => {
      if (++depth > maxDepth) fail(`${what}: containers nest deeper than ${maxDepth} levels`);
      if (n > bytes.length - pos) fail(`${what}: truncated`);
      const a = [];
      for (let i = 0; i < n; i++) a.push(item());
      depth--;
      return a;
    };
    const map = (n) => {
      if (++depth > maxDepth) fail(`${what}: containers nest deeper than ${maxDepth} levels`);
      if (2 * n > bytes.length - pos) fail(`${what}: truncated`);
      const m = new Map(), seen = new Set();
      for (let i = 0; i < n; i++) {
        const keyStart = pos, k = item(), id = identity(bytes, keyStart);
        if (seen.has(id)) fail(`${what}: key ${JSON.stringify(String(k))} appears twice in one map`);
        seen.add(id);
        const start = pos;
        const v = item();
        // A key JS cannot tell from another (1 and 1.0, or a container) keeps its own entry.
        m.set(m.has(k) || typeof k === "object" ? { key: k, id } : k, v);
        if (spans && depth === 1 && typeof k === "string") spans["string:" + k] = pos - start;
      }
      depth--;
      return m;
    };
    const item = () => {
      need(1);
      const c = bytes[pos++];
      let v;
      if (c < 0x80) v = c;
      else if (c >= 0xe0) v = c - 0x100;
      else if (c >= 0xa0 && c <= 0xbf) v = str(c & 0x1f);
      else if (c >= 0x90 && c <= 0x9f) v = arr(c & 0x0f);
      else if (c >= 0x80 && c <= 0x8f) v = map(c & 0x0f);
      else switch (c) {
        case 0xc0: v = null; break;
        case 0xc2: v = false; break;
        case 0xc3: v = true; break;
        case 0xc4: case 0xc5: case 0xc6: v = take(Number(uint(1 << (c - 0xc4)))); break;
        case 0xca: need(4); v = view.getFloat32(pos); pos += 4; break;
        case 0xcb: need(8); v = view.getFloat64(pos); pos += 8; break;
        case 0xcc: case 0xcd: case 0xce: case 0xcf: v = int(uint(1 << (c - 0xcc))); break;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
          const size = 1 << (c - 0xd0), u = uint(size);
          v = int(BigInt.asIntN(8 * size, u));
          break;
        }
        case 0xd9: case 0xda: case 0xdb: v = str(Number(uint(1 << (c - 0xd9)))); break;
        case 0xdc: case 0xdd: v = arr(Number(uint(2 << (c - 0xdc)))); break;
        case 0xde: case 0xdf: v = map(Number(uint(2 << (c - 0xde)))); break;
        default:
          if (c === 0xc1) fail(`${what}: byte 0xc1 is never used`);
          fail(`${what}: msgpack ext types are not allowed`);
      }
      return v;
    };
    const value = item();
    if (pos !== bytes.length) fail(`${what}: trailing bytes after the msgpack value`);
    return value;
  }

  // The msgpack identity of the (already decoded, so well-formed) value at `start`, as a
  // string: type family and value, as ledger/encoding.py's _identity.
  function identity(bytes, start) {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let pos = start;
    const uint = (size) => { let n = 0n; for (let i = 0; i < size; i++) n = (n << 8n) | BigInt(bytes[pos + i]); pos += size; return n; };
    const float = (x) => "f:" + (Number.isNaN(x) ? "nan" : String(x === 0 ? 0 : x));
    const raw = (tag, n) => { const h = tag + hex(bytes.subarray(pos, pos + n)); pos += n; return h; };
    // Containers: each part length-prefixed (no escaping, so the size stays linear).
    const part = (id) => `${id.length}:${id}`;
    const many = (n) => { let out = `a${n}[`; for (let i = 0; i < n; i++) out += part(one()); return out + "]"; };
    const pairs = (n) => {
      const out = [];
      for (let i = 0; i < n; i++) out.push(part(one()) + part(one()));
      return `m${n}[${out.sort().map(part).join("")}]`;
    };
    const one = () => {
      const c = bytes[pos++];
      if (c < 0x80) return "i:" + c;
      if (c >= 0xe0) return "i:" + (c - 0x100);
      if (c >= 0xa0 && c <= 0xbf) return raw("s:", c & 0x1f);
      if (c >= 0x90 && c <= 0x9f) return many(c & 0x0f);
      if (c >= 0x80 && c <= 0x8f) return pairs(c & 0x0f);
      switch (c) {
        case 0xc0: return "n";
        case 0xc2: return "b:0";
        case 0xc3: return "b:1";
        case 0xc4: case 0xc5: case 0xc6: return raw("y:", Number(uint(1 << (c - 0xc4))));
        case 0xd9: case 0xda: case 0xdb: return raw("s:", Number(uint(1 << (c - 0xd9))));
        case 0xca: pos += 4; return float(view.getFloat32(pos - 4));
        case 0xcb: pos += 8; return float(view.getFloat64(pos - 8));
        case 0xcc: case 0xcd: case 0xce: case 0xcf: return "i:" + uint(1 << (c - 0xcc));
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: { const size = 1 << (c - 0xd0); return "i:" + BigInt.asIntN(8 * size, uint(size)); }
        case 0xdc: case 0xdd: return many(Number(uint(2 << (c - 0xdc))));
        default: return pairs(Number(uint(2 << (c - 0xde))));
      }
    };
    return one();
  }

  // Decoded msgpack -> something JSON-like to show, in the API's shape (ledger/jsonview.py):
  // bin as base64; a map with a key other than a string as {"$map": [[key, value], ...]}.
  function toPlain(v) {
    if (v instanceof Uint8Array) return b64(v);
    if (typeof v === "bigint") return v.toString();
    if (typeof v === "number" && !Number.isFinite(v)) return String(v).replace("Infinity", "inf").replace("NaN", "nan");
    if (Array.isArray(v)) return v.map(toPlain);
    if (v instanceof Map) {
      const keys = [...v.keys()];
      if (keys.every((k) => typeof k === "string") && !(keys.length === 1 && keys[0] === "$map")) {
        const o = {};
        for (const [k, x] of v) o[k] = toPlain(x);
        return o;
      }
      return { $map: [...v].map(([k, x]) => [toPlain(k !== null && typeof k === "object" && "id" in k ? k.key : k), toPlain(x)]) };
    }
    return v;
  }

  // ---- typed field checks (as ledger/encoding.py) ----
  const isInt = (v) => (typeof v === "number" && Number.isInteger(v)) || typeof v === "bigint";
  function expInt(v, what, lo = 0n, hi = U64) {
    if (!isInt(v)) fail(`${what}: expected an integer`);
    if (BigInt(v) < lo || BigInt(v) > hi) fail(`${what}: ${v} is outside [${lo}, ${hi}]`);
    return v;
  }
  function expBin(v, what, len) {
    if (!(v instanceof Uint8Array)) fail(`${what}: expected bin`);
    if (len !== undefined && v.length !== len) fail(`${what}: expected ${len} bytes, got ${v.length}`);
    return v;
  }
  function expStr(v, what) { if (typeof v !== "string") fail(`${what}: expected str`); return v; }
  function expArr(v, what, len) {
    if (!Array.isArray(v)) fail(`${what}: expected an array`);
    if (len !== undefined && v.length !== len) fail(`${what}: expected an array of ${len} items, got ${v.length}`);
    return v;
  }
  function canonical(bytes, obj, what) {
    let again;
    try { again = encode(obj); } catch (e) { fail(`${what}: not in canonical msgpack encoding`); }
    if (!equal(again, bytes)) fail(`${what}: not in canonical msgpack encoding`);
  }

  // ---- records, headers ----
  function decodeEnvelope(envelope) {
    const w = "record envelope";
    if (envelope.length > MAX_ENVELOPE) fail(`${w}: ${envelope.length} bytes exceeds ${MAX_ENVELOPE}`);
    const items = expArr(decode(envelope, w), w, 2);
    const bodyBytes = expBin(items[0], `${w}.body`), sig = expBin(items[1], `${w}.sig`, 64);
    canonical(envelope, items, w);
    return { bodyBytes, sig, body: decodeBody(bodyBytes) };
  }
  function decodeBody(data) {
    const w = "record body";
    if (data.length > MAX_CONFIG_BODY) fail(`${w}: ${data.length} bytes exceeds ${MAX_CONFIG_BODY}`);
    const spans = {};
    const m = decode(data, w, spans, MAX_DEPTH + 1); // the body map and a payload of 64
    if (!(m instanceof Map)) fail(`${w}: expected a map`);
    if (m.size !== BODY_KEYS.length) fail(`${w}: expected a map of 7 keys, got ${m.size}`);
    // SPEC section 10: a sealed body carries payload_digest (bin 32) in place of payload.
    const keys = m.has("payload_digest") ? SEALED_BODY_KEYS : BODY_KEYS;
    for (const k of m.keys()) if (!keys.includes(k)) fail(`${w}: unexpected key ${JSON.stringify(String(k))}`);
    const b = Object.fromEntries(m);
    const len = (s) => enc.encode(s).length;
    expStr(b.chain, `${w}.chain`);
    if (len(b.chain) < 1 || len(b.chain) > 64) fail(`${w}.chain: must be 1..64 bytes`);
    if (!TYPE_RE.test(expStr(b.type, `${w}.type`))) fail(`${w}.type: ${JSON.stringify(b.type)} does not match ^[a-z0-9][a-z0-9._-]{0,63}$`);
    expStr(b.subject, `${w}.subject`);
    if (len(b.subject) < 1 || len(b.subject) > 256) fail(`${w}.subject: must be 1..256 bytes of UTF-8`);
    const limit = payloadLimit(b.type);
    if (spans["string:payload"] > limit) fail(`${w}.payload: ${spans["string:payload"]} bytes exceeds ${limit}`);
    if (data.length > MAX_BODY && b.type !== CONFIG_TYPE) fail(`${w}: ${data.length} bytes exceeds ${MAX_BODY} (only a ${CONFIG_TYPE} payload may exceed ${MAX_PAYLOAD})`);
    expInt(b.ts, `${w}.ts`, -(1n << 63n), I64);
    expInt(b.nonce, `${w}.nonce`);
    expBin(b.signer, `${w}.signer`, 32);
    if (keys === SEALED_BODY_KEYS) expBin(b.payload_digest, `${w}.payload_digest`, 32);
    return b;
  }
  const HEADER_FIELDS = ["version", "chain", "height", "time_ms", "prev_hash", "records_root",
    "record_count", "log_root", "log_size", "proposer", "validators_hash"];
  function decodeHeader(bytes) {
    const w = "header";
    const items = expArr(decode(bytes, w), w, 11);
    canonical(bytes, items, w);
    const h = Object.fromEntries(HEADER_FIELDS.map((k, i) => [k, items[i]]));
    if (expInt(h.version, `${w}.version`) !== 1) fail(`${w}.version: unsupported version ${h.version}`);
    expStr(h.chain, `${w}.chain`);
    expInt(h.height, `${w}.height`, 1n);
    expInt(h.time_ms, `${w}.time_ms`, 0n, I64);
    for (const k of ["prev_hash", "records_root", "log_root", "validators_hash"]) expBin(h[k], `${w}.${k}`, 32);
    for (const k of ["record_count", "log_size", "proposer"]) expInt(h[k], `${w}.${k}`);
    return h;
  }

  // ---- the configuration (SPEC sections 5 and 9), as ledger/config.py ----
  // One set of rules for genesis.json (lenient: unknown keys ignored) and a change's map
  // (strict: exactly the listed keys, msgpack types). A configuration is
  // {chainId, genesisHash, version, id, validators, totalPower, organizations, members,
  //  policies, governanceRole, threshold, governing}; genesis is version 0 (its id and
  // genesisHash are set by `configOf`, which needs sha256). Not checked here, unlike
  // ledger/config.py: that a public key is a valid curve point (libsodium's test).
  const isReserved = (type) => type.startsWith(RESERVED);
  function plain(v, what) { // a change's decoded Maps as objects (keys must be strings)
    if (v instanceof Map) {
      const o = Object.create(null);
      for (const [k, x] of v) {
        if (typeof k !== "string") fail(`${what}: a map key is not a string`);
        o[k] = plain(x, `${what}.${k}`);
      }
      return o;
    }
    if (Array.isArray(v)) return v.map((x, i) => plain(x, `${what}[${i}]`));
    return v;
  }
  function buildConfig(doc, strict, chainId, version, raw) {
    const has = (o, k) => Object.prototype.hasOwnProperty.call(o, k);
    const obj = (v, where, required, optional = []) => {
      if (!v || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) fail(`${where}: expected an object`);
      for (const k of required) if (!has(v, k)) fail(`${where}: missing '${k}'`);
      if (strict) for (const k of Object.keys(v)) if (!required.includes(k) && !optional.includes(k)) fail(`${where}: unexpected key '${k}'`);
      return v;
    };
    const str = (o, k, where) => { if (typeof o[k] !== "string") fail(`${where}.${k}: expected str`); return o[k]; };
    const list = (o, k, where) => { if (!Array.isArray(o[k])) fail(`${where}.${k}: expected an array`); return o[k]; };
    const int = (o, k, where) => { if (!isInt(o[k]) || typeof o[k] === "boolean") fail(`${where}.${k}: expected int`); return o[k]; };
    const pubkey = (o, where) => {
      const text = str(o, "pubkey", where);
      if (!/^[0-9a-f]{64}$/.test(text)) fail(`${where}.pubkey: expected 64 lowercase hex characters`);
      return unhex(text, `${where}.pubkey`, 32);
    };
    const roles = (v, where, distinct) => {
      if (!Array.isArray(v) || !v.every((r) => typeof r === "string")) fail(`${where}: expected a list of role names`);
      if (distinct && new Set(v).size !== v.length) fail(`${where}: a role is listed twice`);
      return v;
    };
    const policyMap = (v, where) => {
      if (!v || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) fail(`${where}: expected an object`);
      const out = Object.create(null);
      for (const [type, rs] of Object.entries(v)) {
        if (type !== "*" && !TYPE_RE.test(type)) fail(`${where}: ${JSON.stringify(type)} is not a valid record type or '*'`);
        if (isReserved(type)) fail(`${where}: ${JSON.stringify(type)} is a reserved type (ledger.*); no policy can name it`);
        out[type] = roles(rs, `${where}[${JSON.stringify(type)}]`, false);
      }
      return out;
    };
    const entries = list(doc, "validators", "config");
    if (!entries.length) fail("validators: at least one validator is required");
    const validators = entries.map((v, i) => {
      const where = `validators[${i}]`;
      obj(v, where, ["name", "pubkey", "power"], ["p2p", "api"]);
      const name = str(v, "name", where), key = pubkey(v, where), power = int(v, "power", where);
      if (BigInt(power) < 1n) fail(`${where}.power: must be a positive integer`);
      for (const k of ["p2p", "api"]) if (has(v, k)) str(v, k, where);
      return { index: i, name, pubkey: key, power: Number(power) };
    });
    if (new Set(validators.map((v) => hex(v.pubkey))).size !== validators.length) fail("validators: two validators share a public key");
    if (new Set(validators.map((v) => v.name)).size !== validators.length) fail("validators: two validators share a name");
    const totalPower = validators.reduce((n, v) => n + v.power, 0);
    if (BigInt(totalPower) >= MAX_TOTAL_POWER) fail(`validators: total power must be below ${MAX_TOTAL_POWER}`);
    const members = new Map(), organizations = [];
    list(doc, "organizations", "config").forEach((org, i) => {
      const where = `organizations[${i}]`;
      obj(org, where, ["name", "members"]);
      const orgName = str(org, "name", where);
      if (organizations.includes(orgName)) fail(`${where}.name: organisation ${JSON.stringify(orgName)} appears twice`);
      organizations.push(orgName);
      list(org, "members", where).forEach((m, j) => {
        const mw = `${where}.members[${j}]`;
        obj(m, mw, ["name", "pubkey", "roles"]);
        const name = str(m, "name", mw), key = hex(pubkey(m, mw));
        const rs = roles(m.roles, `${mw}.roles`, true);
        if (members.has(key)) fail(`${mw}.pubkey: key already belongs to ${members.get(key).organization}/${members.get(key).name}`);
        members.set(key, { organization: orgName, name, roles: rs });
      });
    });
    const policies = policyMap(doc.policies, "policies");
    let governanceRole = DEFAULT_GOVERNANCE_ROLE, threshold = null;
    if (has(doc, "governance")) {
      const g = obj(doc.governance, "governance", [], ["role", "threshold"]);
      if (has(g, "role")) governanceRole = str(g, "role", "governance");
      if (has(g, "threshold")) threshold = Number(int(g, "threshold", "governance"));
    }
    const governing = new Set([...members.values()].filter((m) => m.roles.includes(governanceRole)).map((m) => m.organization));
    const n = governing.size;
    if (threshold === null) threshold = n ? Math.floor(n / 2) + 1 : 0;
    else if (!(threshold >= 1 && threshold <= n)) fail(`governance.threshold: ${threshold} is not within 1..${n} (the organisations with a member holding ${JSON.stringify(governanceRole)})`);
    let witnesses = [];
    if (has(doc, "witnesses")) {
      const ws = list(doc, "witnesses", "config").map((w, i) => { obj(w, `witnesses[${i}]`, ["name", "pubkey"]); return [str(w, "name", `witnesses[${i}]`), hex(pubkey(w, `witnesses[${i}]`))]; });
      if (new Set(ws.map((w) => w[1])).size !== ws.length) fail("witnesses: two witnesses share a public key");
      if (new Set(ws.map((w) => w[0])).size !== ws.length) fail("witnesses: two witnesses share a name");
      witnesses = ws.map(([name, key]) => ({ name, pubkey: key }));
    }
    if (has(doc, "read_policies")) policyMap(doc.read_policies, "read_policies");
    return { chainId, version, validators, totalPower, organizations, members, policies,
             governanceRole, threshold, governing, witnesses, raw };
  }

  // ---- genesis (SPEC section 5): version 0 of the configuration ----
  function parseGenesis(bytes) {
    let doc;
    try { doc = JSON.parse(utf8.decode(bytes)); } catch (e) { fail(`genesis: not valid JSON (${e.message})`); }
    if (!doc || typeof doc !== "object" || Array.isArray(doc)) fail("genesis: expected a JSON object");
    if (typeof doc.chain_id !== "string") fail("genesis.chain_id: expected a string");
    for (const k of ["validators", "organizations", "policies"]) if (!(k in doc)) fail(`genesis: missing '${k}'`);
    return buildConfig(doc, false, doc.chain_id, 0, bytes);
  }
  // The genesis configuration with its hash (a change's prev names it; approvals sign it).
  async function configOf(genesis) {
    if (!genesis.genesisHash) {
      if (!genesis.raw) fail("genesis: its bytes are needed to follow configuration changes");
      genesis.genesisHash = await sha256(genesis.raw);
      genesis.id = genesis.genesisHash;
    }
    return genesis;
  }
  // SPEC section 5's authorisation rule under `config`; reserved types are never allowed
  // by policies (only as a change or redaction).
  function maySubmit(config, signerHex, type) {
    if (isReserved(type)) return false;
    const m = config.members.get(signerHex);
    if (!m) return false;
    const allowed = Object.prototype.hasOwnProperty.call(config.policies, type) ? config.policies[type] : config.policies["*"] || [];
    return Array.isArray(allowed) && m.roles.some((r) => allowed.includes(r));
  }
  const source = (config) => (config.version === 0 ? "genesis" : `configuration version ${config.version}`);

  // SPEC section 9: the payload of a ledger.config / ledger.redact record.
  function payloadOf(payload, keys, what) {
    if (!(payload instanceof Map) || payload.size !== keys.length || !keys.every((k) => payload.has(k))) fail(`${what}: expected a map of exactly ${keys.join(", ")}`);
    const change = payload.get("change");
    if (!(change instanceof Uint8Array)) fail(`${what}.change: expected bin`);
    const pairs = (k) => {
      const v = payload.get(k);
      if (!Array.isArray(v)) fail(`${what}.${k}: expected an array`);
      return v.map((p, i) => {
        if (!Array.isArray(p) || p.length !== 2 || !(p[0] instanceof Uint8Array) || !(p[1] instanceof Uint8Array) || p[0].length !== 32 || p[1].length !== 64) fail(`${what}.${k}[${i}]: expected [pubkey: bin(32), sig: bin(64)]`);
        return p;
      });
    };
    return { change, approvals: pairs("approvals"), joins: keys.includes("joins") ? pairs("joins") : [] };
  }
  // What an approval, join or redaction approval signs: tag + packb([genesis_hash, sha256(change)]).
  async function approvalMessage(config, change, tag) {
    return concat(tag, encode([config.genesisHash, await sha256(change)]));
  }
  // Approvals by distinct governance members of `config`, each signature valid: the
  // governing organisations that approved.
  async function checkApprovals(config, approvals, message) {
    const seen = new Set(), orgs = new Set();
    for (const [i, [key, sig]] of approvals.entries()) {
      const k = hex(key);
      if (seen.has(k)) fail(`approval ${i}: ${k} approves twice`);
      seen.add(k);
      const m = config.members.get(k);
      if (!m || !m.roles.includes(config.governanceRole)) fail(`approval ${i}: ${k} is not a member holding the governance role ${JSON.stringify(config.governanceRole)} in ${source(config)}`);
      if (!(await ed25519Verify(key, message, sig))) fail(`approval ${i}: signature by ${k} does not verify (wrong chain, change or key?)`);
      orgs.add(m.organization);
    }
    return orgs;
  }
  // The configuration a ledger.config record (decoded body) makes where `config` is in
  // force (ledger/config.py apply_change); fails with the reason otherwise.
  async function applyChange(config, body) {
    await configOf(config);
    if (body.type !== CONFIG_TYPE || body.payload_digest !== undefined) fail(`a configuration change is an inline ${CONFIG_TYPE} record`);
    if (!config.members.has(hex(body.signer))) fail(`signer ${hex(body.signer)} of a configuration change is not a member of ${source(config)}`);
    const p = payloadOf(body.payload, ["change", "approvals", "joins"], "ledger.config payload");
    const doc = decode(p.change, "change");
    if (!(doc instanceof Map)) fail("change: expected a map");
    const d = plain(doc, "change");
    for (const k of ["version", "prev", "validators", "organizations", "policies"]) if (!(k in d)) fail(`change: missing '${k}'`);
    for (const k of Object.keys(d)) if (!["version", "prev", "validators", "organizations", "policies", "governance", "witnesses", "read_policies"].includes(k)) fail(`change: unexpected key '${k}'`);
    if (!isInt(d.version)) fail("change.version: expected int");
    if (!(d.prev instanceof Uint8Array)) fail("change.prev: expected bin");
    if (Number(d.version) !== config.version + 1) fail(`change has version ${d.version}, but version ${config.version} is in force: expected ${config.version + 1}`);
    if (!equal(d.prev, config.id)) fail(`change.prev ${hex(d.prev)} does not name the configuration in force (version ${config.version}, ${hex(config.id)})`);
    const next = buildConfig(d, true, config.chainId, config.version + 1, null);
    next.genesisHash = config.genesisHash;
    next.id = await sha256(p.change);
    const orgs = await checkApprovals(config, p.approvals, await approvalMessage(config, p.change, CONFIG_TAG));
    if (config.threshold === 0) fail(`${source(config)} has no governing organisation: it cannot be changed`);
    if (orgs.size < config.threshold) fail(`approved by ${orgs.size} governing organisation(s) (${[...orgs].sort().join(", ") || "none"}); ${config.threshold} of ${config.governing.size} are required`);
    const old = new Set(config.validators.map((v) => hex(v.pubkey)));
    const needed = new Set(next.validators.map((v) => hex(v.pubkey)).filter((k) => !old.has(k)));
    const joinMsg = await approvalMessage(config, p.change, JOIN_TAG), joined = new Set();
    for (const [i, [key, sig]] of p.joins.entries()) {
      const k = hex(key);
      if (!needed.has(k)) fail(`join ${i}: ${k} is not a validator key this change adds`);
      if (joined.has(k)) fail(`join ${i}: ${k} joins twice`);
      if (!(await ed25519Verify(key, joinMsg, sig))) fail(`join ${i}: signature by ${k} does not verify`);
      joined.add(k);
    }
    const missing = [...needed].filter((k) => !joined.has(k)).sort();
    if (missing.length) fail(`no join signature for new validator key(s) ${missing.join(", ")}`);
    return next;
  }
  // The per-configuration half of a ledger.redact record (SPEC section 10): its ids and the
  // governing organisations that approved.
  async function checkRedaction(config, body) {
    if (!config.members.has(hex(body.signer))) fail(`signer ${hex(body.signer)} of a redaction is not a member of ${source(config)}`);
    const p = payloadOf(body.payload, ["change", "approvals"], "ledger.redact payload");
    const change = decode(p.change, "redaction change");
    if (!Array.isArray(change) || change.length !== 3 || !(change[0] instanceof Uint8Array) || !Array.isArray(change[1]) || typeof change[2] !== "string") fail("redaction change: expected [genesis_hash, [id, ...], reason]");
    if (!equal(change[0], config.genesisHash)) fail("redaction change names another genesis");
    const ids = change[1];
    if (!ids.length || !ids.every((x) => x instanceof Uint8Array && x.length === 32)) fail("redaction change: ids must be a non-empty array of bin(32)");
    if (new Set(ids.map(hex)).size !== ids.length) fail("redaction change: an id is listed twice");
    const orgs = await checkApprovals(config, p.approvals, await approvalMessage(config, p.change, REDACT_TAG));
    return { ids: ids.map(hex), orgs };
  }
  // One record valid where `config` is in force: the new configuration it makes, a
  // redaction, or null (ledger/validation.py check_record, after the signature).
  async function checkRecordAuthority(config, body) {
    if (isReserved(body.type)) {
      if (body.payload_digest !== undefined) fail(`a ${body.type} record always carries an inline payload`);
      if (body.type === CONFIG_TYPE) return { config: await applyChange(config, body) };
      if (body.type === REDACT_TYPE) return { redaction: await checkRedaction(await configOf(config), body) };
      fail(`record type ${JSON.stringify(body.type)} is reserved (ledger.*) and not defined by the protocol`);
    }
    if (!maySubmit(config, hex(body.signer), body.type)) fail(`signer ${hex(body.signer)} is not authorised for type ${JSON.stringify(body.type)} by ${source(config)}`);
    return {};
  }
  // ---- sealed payloads (SPEC section 10), as ledger/records.py ----
  // payload_digest = sha256("ledger.payload.v1\0" + salt + payload_bytes).
  const payloadDigest = (salt, payloadBytes) => sha256(concat(PAYLOAD_TAG, salt, payloadBytes));
  // The one rule for a sealed payload (check_sealed_payload): a 32-byte salt, payload bytes
  // that are one payload by section 2's rules (kept as sent, so not re-encoded), and their
  // digest equal to the record's. `digest` is bytes or lowercase hex. Resolves to the decoded
  // payload; throws VerifyError naming `what` otherwise.
  async function checkSealedPayload(digest, salt, payloadBytes, what = "sealed payload") {
    if (typeof digest === "string") digest = unhex(digest, `${what}.payload_digest`, 32);
    expBin(digest, `${what}.payload_digest`, 32);
    if (!(salt instanceof Uint8Array)) fail(`${what}: the salt is not bytes`);
    if (!(payloadBytes instanceof Uint8Array)) fail(`${what}: the payload is not bytes`);
    if (salt.length !== SALT_SIZE) fail(`${what}: the salt is ${salt.length} bytes, not ${SALT_SIZE}`);
    if (payloadBytes.length > MAX_PAYLOAD) fail(`${what}: the payload is ${payloadBytes.length} bytes, more than ${MAX_PAYLOAD}`);
    const value = decode(payloadBytes, `${what}.payload`, null, MAX_DEPTH);
    if (!equal(await payloadDigest(salt, payloadBytes), digest)) fail(`${what}: sha256 of the salt and payload is not the record's payload_digest ${hex(digest)}`);
    return value;
  }
  // A decoded body in the API's JSON shape: an inline record's payload as toPlain, a sealed
  // record's payload_digest as hex (and no payload key).
  function plainBody(body) {
    const { payload, payload_digest: digest, ...rest } = body;
    const out = { ...rest, signer: hex(body.signer) };
    if (digest !== undefined) out.payload_digest = hex(digest);
    else out.payload = toPlain(payload);
    return out;
  }

  const validatorsHash = (config) => sha256(encode(config.validators.map((v) => [v.pubkey, v.power])));

  // ---- Ed25519 (WebCrypto) and RFC 9162 ----
  const L = (1n << 252n) + 27742317777372353535851937790883648493n;
  async function ed25519Verify(pub, msg, sig) {
    if (pub.length !== 32 || sig.length !== 64) return false;
    // libsodium rejects a non-canonical S (>= L); do the same whatever WebCrypto does.
    let s = 0n;
    for (let i = 63; i >= 32; i--) s = (s << 8n) | BigInt(sig[i]);
    if (s >= L) return false;
    try {
      const key = await crypto.subtle.importKey("raw", pub, { name: "Ed25519" }, false, ["verify"]);
      return await crypto.subtle.verify("Ed25519", key, sig, msg);
    } catch (e) {
      return false; // an invalid public key
    }
  }
  const leafHash = (e) => sha256(concat(Uint8Array.of(0), e));
  const nodeHash = (l, r) => sha256(concat(Uint8Array.of(1), l, r));
  const bitLength = (n) => (n === 0 ? 0 : Math.floor(Math.log2(n)) + 1);
  const popcount = (n) => { let c = 0; while (n) { c += n & 1; n = Math.floor(n / 2); } return c; };
  // RFC 9162 2.1.3.2: the root implied by an audit path (index, size < 2^53).
  async function rootFromPath(index, size, leaf, path) {
    if (!(index >= 0 && index < size)) fail(`index ${index} out of range for size ${size}`);
    const inner = bitLength(Number(BigInt(index) ^ BigInt(size - 1)));
    const border = popcount(Math.floor(index / 2 ** inner));
    if (path.length !== inner + border) fail(`wrong proof length ${path.length} for index ${index}, size ${size}`);
    let fn = index, sn = size - 1, r = leaf;
    for (const p of path) {
      if (fn % 2 === 1 || fn === sn) {
        r = await nodeHash(p, r);
        while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
      } else {
        r = await nodeHash(r, p);
      }
      fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
    }
    if (sn !== 0) fail("proof too short");
    return r;
  }

  // SPEC section 4: precommits for sha256(header) by distinct validators of the set in force
  // (genesis's, or a later configuration's), ascending,
  // holding more than 2/3 of the power.
  async function verifyCert(chain, header, headerBytes, round, sigs, genesis) {
    if (!sigs.length) fail("certificate has no signatures");
    for (let i = 1; i < sigs.length; i++) if (sigs[i - 1][0] >= sigs[i][0]) fail("certificate signatures are not in strictly ascending validator order");
    const blockHash = await sha256(headerBytes);
    const vote = concat(VOTE_TAG, encode([chain, PRECOMMIT, header.height, round, blockHash]));
    let power = 0;
    for (const [i, sig] of sigs) {
      if (i >= genesis.validators.length) fail(`certificate names validator ${i}, but the set has ${genesis.validators.length}`);
      const v = genesis.validators[i];
      if (!(await ed25519Verify(v.pubkey, vote, sig))) fail(`certificate signature of validator ${i} (${v.name}) does not verify`);
      power += v.power;
    }
    if (!(3 * power > 2 * genesis.totalPower)) fail(`certificate signers hold power ${power} of ${genesis.totalPower}; more than 2/3 is required`);
    return { blockHash, power, names: sigs.map(([i]) => genesis.validators[i].name) };
  }

  // RFC 9162 2.1.1: the root of a list of leaf hashes.
  async function merkleRoot(leaves) {
    if (!leaves.length) return sha256(new Uint8Array(0));
    if (leaves.length === 1) return leaves[0];
    let k = 1;
    while (k * 2 < leaves.length) k *= 2;
    return nodeHash(await merkleRoot(leaves.slice(0, k)), await merkleRoot(leaves.slice(k)));
  }

  // A whole block (the exact msgpack bytes of GET /v1/blocks/{h}) where `config` is in force
  // (genesis, or the configuration a chain's changes lead to: `verifyChain`): header against
  // the set in force, every record's signature and authorisation (a ledger.config change is
  // applied, at most one per block; a ledger.redact record's approvals checked), records_root,
  // and the certificate by the set in force. (The hash link, log root and what a redaction
  // names need the chain: `verifyChain`, or `ledger audit` for every rule.)
  async function verifyBlock(bytes, config) {
    const steps = [];
    try {
      await configOf(config);
      const items = expArr(decode(bytes, "block"), "block", 3);
      canonical(bytes, items, "block");
      const headerBytes = encode(expArr(items[0], "block.header"));
      const header = decodeHeader(headerBytes);
      if (header.chain !== config.chainId) fail(`block is for chain ${JSON.stringify(header.chain)}, genesis is ${JSON.stringify(config.chainId)}`);
      if (!equal(header.validators_hash, await validatorsHash(config))) {
        fail(config.version === 0 ? "header's validators_hash does not match genesis"
          : `header's validators_hash does not match the validator set in force (configuration version ${config.version})`);
      }
      steps.push(`header of ${header.chain} at height ${header.height}, with the validator set of ${source(config)}`);
      const envelopes = expArr(items[1], "block.records").map((e, i) => expBin(e, `block.records[${i}]`));
      if (envelopes.length !== header.record_count) fail(`record_count ${header.record_count}, but the block holds ${envelopes.length}`);
      let next = null;
      const redactions = [], records = [];
      for (const [i, e] of envelopes.entries()) {
        try {
          const rec = decodeEnvelope(e);
          if (rec.body.chain !== header.chain) fail(`names chain ${JSON.stringify(rec.body.chain)}`);
          if (!(await ed25519Verify(rec.body.signer, concat(RECORD_TAG, rec.bodyBytes), rec.sig))) fail("signature does not verify");
          if (rec.body.type === CONFIG_TYPE && next !== null) fail("a second ledger.config record in one block");
          const effect = await checkRecordAuthority(config, rec.body);
          if (effect.config) next = effect.config;
          if (effect.redaction) redactions.push({ index: i, ...effect.redaction });
          records.push({ id: hex(await sha256(rec.bodyBytes)), body: rec.body });
        } catch (err) {
          if (err instanceof VerifyError) fail(`record ${i} (${err.message})`);
          throw err;
        }
      }
      steps.push(`${envelopes.length} record signatures verify, each signer authorised by ${source(config)}`);
      if (next) steps.push(`configuration change to version ${next.version}, approved and joined as SPEC section 9 requires; it governs the next height`);
      const root = await merkleRoot(await Promise.all(envelopes.map(leafHash)));
      if (!equal(root, header.records_root)) fail("records_root is not the root of the block's records");
      steps.push("records_root is the RFC 9162 root of the records");
      const cert = expArr(items[2], "block.cert", 4);
      expInt(cert[0], "cert.height", 1n);
      expInt(cert[1], "cert.round", 0n, (1n << 32n) - 1n);
      if (cert[0] !== header.height) fail(`certificate is for height ${cert[0]}, the header for ${header.height}`);
      const sigs = expArr(cert[3], "cert.signatures").map((p, i) => {
        const pair = expArr(p, `cert.signatures[${i}]`, 2);
        return [expInt(pair[0], `cert.signatures[${i}].validator`), expBin(pair[1], `cert.signatures[${i}].sig`, 64)];
      });
      const { blockHash, power, names } = await verifyCert(header.chain, header, headerBytes, cert[1], sigs, config);
      if (!equal(expBin(cert[2], "cert.block_hash", 32), blockHash)) fail("certificate is for another block hash");
      steps.push(`certificate: precommits by ${names.join(", ")} (power ${power} of ${config.totalPower})`);
      return { ok: true, steps, blockHash: hex(blockHash), header, newConfig: next, redactions, records };
    } catch (e) {
      if (!(e instanceof VerifyError)) throw e;
      return { ok: false, steps, reason: e.message };
    }
  }

  // Blocks 1..n (exact bytes each) from genesis, following every configuration change: each
  // block is checked by `verifyBlock` under the configuration in force at its height, then
  // the chain rules: height sequence, prev_hash links (block 1 to the genesis hash),
  // increasing time_ms, record ids and (signer, nonce) and sealed digests unique, and a
  // redaction names sealed records committed earlier, not yet redacted, with approvals
  // meeting the threshold or by the records' organisation. Not checked here: log_size and
  // log_root (`ledger audit` does). Resolves to {ok: true, height, versions: [{version,
  // from}], steps} or {ok: false, height, reason: "height N: ...", versions, steps}.
  async function verifyChain(blocks, genesis, resume = null) {
    const config0 = await configOf(genesis);
    // `resume`: the `state` of an earlier passing call, to go on from its tip.
    const st = resume || { height: 0, config: config0, prev: config0.genesisHash, lastTime: -1n,
      versions: [{ version: 0, from: 1 }], configs: [config0], ids: new Set(), nonces: new Set(),
      digests: new Set(), sealed: new Map(), redacted: new Set() };
    const { versions, ids, nonces, digests, sealed, redacted } = st;
    let { config, prev, lastTime } = st;
    const steps = [];
    for (const [i, bytes] of blocks.entries()) {
      const height = st.height + i + 1;
      const bad = (reason) => ({ ok: false, height, reason: `height ${height}: ${reason}`, versions, steps });
      const r = await verifyBlock(bytes, config);
      if (!r.ok) return bad(r.reason);
      const h = r.header;
      if (h.height !== height) return bad(`expected height ${height}, got ${h.height}`);
      if (!equal(h.prev_hash, prev)) return bad(height === 1 ? "block 1 does not link to the genesis hash" : `prev_hash is not the hash of block ${height - 1}`);
      if (BigInt(h.time_ms) <= lastTime) return bad("time_ms does not increase");
      for (const [j, rec] of r.records.entries()) {
        const nonce = `${hex(rec.body.signer)}:${rec.body.nonce}`;
        if (ids.has(rec.id)) return bad(`record ${j}: its id is already on the chain`);
        if (nonces.has(nonce)) return bad(`record ${j}: (signer, nonce) is already on the chain`);
        ids.add(rec.id); nonces.add(nonce);
        if (rec.body.payload_digest !== undefined) {
          const d = hex(rec.body.payload_digest);
          if (digests.has(d)) return bad(`record ${j}: its payload_digest is already on the chain`);
          digests.add(d);
        }
      }
      for (const red of r.redactions) {
        const signers = [];
        for (const rid of red.ids) {
          if (!sealed.has(rid)) return bad(`record ${red.index} (redaction names ${rid}, which is not a sealed record committed earlier)`);
          if (redacted.has(rid)) return bad(`record ${red.index} (redaction names ${rid}, which is already redacted)`);
          signers.push(sealed.get(rid));
        }
        const orgs = new Set(signers.map((s) => (config.members.get(s) || {}).organization));
        const byOwner = orgs.size === 1 && !orgs.has(undefined) && red.orgs.has([...orgs][0]);
        if (!(config.threshold && red.orgs.size >= config.threshold) && !byOwner) return bad(`record ${red.index} (redaction approved by ${red.orgs.size} governing organisation(s), below the threshold, and not by the records' own organisation)`);
        red.ids.forEach((rid) => redacted.add(rid));
      }
      for (const rec of r.records) if (rec.body.payload_digest !== undefined) sealed.set(rec.id, hex(rec.body.signer));
      prev = await sha256(encode(expArr(decode(bytes, "block"), "block", 3)[0]));
      lastTime = BigInt(h.time_ms);
      if (r.newConfig) {
        config = r.newConfig;
        versions.push({ version: config.version, from: height + 1 });
        st.configs.push(config);
        steps.push(`height ${height}: configuration version ${config.version} governs from height ${height + 1}`);
      }
    }
    Object.assign(st, { height: st.height + blocks.length, config, prev, lastTime });
    steps.push(`${st.height} blocks verified from genesis, following ${versions.length} configuration version(s)`);
    return { ok: true, height: st.height, versions, steps, config, state: st };
  }

  function configAt(st, height) {
    let i = 0;
    while (i + 1 < st.versions.length && st.versions[i + 1].from <= height) i++;
    return st.configs[i];
  }

  // ---- witness cosignatures (SPEC section 11, as ledger/witness.py) ----
  // What a witness signs for the block with `header` (decoded) and hash `blockHash`.
  function cosignedMessage(genesisHash, header, blockHash) {
    return concat(WITNESS_TAG, encode([genesisHash, header.height, blockHash, header.log_size, header.log_root]));
  }
  // The header of a block's exact bytes (GET /v1/blocks/{h} as msgpack) and its hash.
  async function headerOf(bytes) {
    const items = expArr(decode(bytes, "block"), "block", 3);
    const headerBytes = encode(expArr(items[0], "block.header"));
    return { header: decodeHeader(headerBytes), headerBytes, blockHash: await sha256(headerBytes) };
  }
  // Each entry of a `witnesses` list ([{pubkey: hex, sig: b64}]: checkpoints, receipts, the
  // block JSON view) checked on its own: [{index, pubkey, name, ok, reason}]. `witnesses` are
  // those of the configuration governing the header's height ([{name, pubkey: hex}]). A list
  // or entry of the wrong shape fails (VerifyError) as a whole.
  async function checkCosignatures(entries, witnesses, genesisHash, header, blockHash, where) {
    if (!Array.isArray(entries)) fail(`${where}: 'witnesses' is not a list`);
    const known = new Map((witnesses || []).map((w) => [w.pubkey, w.name]));
    const msg = cosignedMessage(genesisHash, header, blockHash);
    const seen = new Set(), out = [];
    for (const [i, e] of entries.entries()) {
      const at = `${where}.witnesses[${i}]`;
      if (!e || typeof e !== "object" || Array.isArray(e)) fail(`${at}: expected an object`);
      const key = hex(unhex(field(e, "pubkey", "string", at), `${at}.pubkey`, 32));
      const sig = unb64(field(e, "sig", "string", at), `${at}.sig`);
      let reason = null;
      if (!known.has(key)) reason = `${key} is not a witness of height ${header.height}`;
      else if (seen.has(key)) reason = `witness ${key} is listed twice`;
      else if (!(await ed25519Verify(unhex(key), msg, sig))) reason = `cosignature by ${key} does not verify over block ${hex(blockHash)} at height ${header.height}`;
      seen.add(key);
      out.push({ index: i, pubkey: key, name: known.has(key) ? known.get(key) : null, ok: reason === null, reason: reason && `${at}: ${reason}` });
    }
    return out;
  }
  // ledger.witness.count_witnesses / require_witnesses: every entry must hold; at least `k`.
  async function countWitnesses(entries, witnesses, genesisHash, header, blockHash, where, k = 0) {
    const checked = await checkCosignatures(entries, witnesses, genesisHash, header, blockHash, where);
    const bad = checked.find((c) => !c.ok);
    if (bad) fail(bad.reason);
    const have = (witnesses || []).length;
    if (checked.length < k) fail(`${where}: ${checked.length} witness cosignature${checked.length === 1 ? "" : "s"} of height ${header.height}, ${k} required (the configuration lists ${have} witness${have === 1 ? "" : "es"})`);
    return checked;
  }

  // ---- receipts (SPEC section 6) ----
  function field(doc, key, kind, where = "receipt") {
    if (!Object.prototype.hasOwnProperty.call(doc, key)) fail(`${where}: missing '${key}'`);
    const v = doc[key];
    const ok = kind === "int" ? Number.isSafeInteger(v)
      : kind === "list" ? Array.isArray(v)
        : kind === "dict" ? v !== null && typeof v === "object" && !Array.isArray(v)
          : typeof v === kind;
    if (!ok) fail(`${where}.${key}: expected ${kind}`);
    return v;
  }

  // `doc`'s header (b64) is of block `height` of `chain`, under `config`'s validator set
  // (receipts.py certified_header, with `certificateOf`): a receipt, a config_proof step, a
  // checkpoint.
  async function certifiedHeaderOf(doc, where, chain, genesis, config, height) {
    const headerBytes = unb64(field(doc, "header", "string", where), `${where}.header`);
    const header = decodeHeader(headerBytes);
    if (header.height !== height) fail(`height ${height} but the header is for height ${header.height}`);
    if (header.chain !== chain) fail(`header names chain ${JSON.stringify(header.chain)}`);
    if (!equal(header.validators_hash, await validatorsHash(config))) {
      fail(config.version === 0 ? `${where}: header's validators_hash does not match genesis`
        : `${where}: header's validators_hash does not match the validator set in force (configuration version ${config.version})`);
    }
    if (header.height === 1 && !equal(header.prev_hash, genesis.genesisHash)) fail(`block 1 links to genesis ${hex(header.prev_hash)}, not this one`);
    return { header, headerBytes };
  }

  // `doc`'s certificate certifies that header by more than 2/3 of `config`'s power.
  async function certificateOf(doc, where, chain, config, header, headerBytes) {
    const cert = field(doc, "cert", "dict", where);
    const round = field(cert, "round", "int", `${where}.cert`);
    if (round < 0 || round > 2 ** 32 - 1) fail(`${where}.cert.round: out of range`);
    const sigs = field(cert, "signatures", "list", `${where}.cert`).map((e, i) => {
      const w = `${where}.cert.signatures[${i}]`;
      if (!e || typeof e !== "object" || Array.isArray(e)) fail(`${w}: expected an object`);
      const validator = field(e, "validator", "int", w);
      if (validator < 0) fail(`${w}.validator: must not be negative`);
      return [validator, expBin(unb64(field(e, "sig", "string", w), `${w}.sig`), `${w}.sig`, 64)];
    });
    const certified = await verifyCert(chain, header, headerBytes, round, sigs, config);
    return { sigs, ...certified };
  }

  // The envelope of `doc` (the receipt itself or a config_proof step) is at `index` of a
  // block of `height` whose header is certified by `config`'s validators (receipts.py _in_block).
  async function inBlock(doc, where, chain, genesis, config, height, envelope) {
    if (envelope === undefined) envelope = unb64(field(doc, "envelope", "string", where), `${where}.envelope`);
    const rec = decodeEnvelope(envelope);
    if (rec.body.chain !== chain) fail(`${where}: record names chain ${JSON.stringify(rec.body.chain)}`);
    const index = field(doc, "index", "int", where);
    const { header, headerBytes } = await certifiedHeaderOf(doc, where, chain, genesis, config, height);
    const path = field(doc, "audit_path", "list", where).map((h, i) => unhex(h, `${where}.audit_path[${i}]`, 32));
    if (typeof header.record_count !== "number" || !(index >= 0 && index < header.record_count)) fail(`index ${index} outside the block's ${header.record_count} records`);
    const root = await rootFromPath(index, header.record_count, await leafHash(envelope), path);
    if (!equal(root, header.records_root)) fail(`${where}: audit path leads to root ${hex(root)}, not the header's records_root ${hex(header.records_root)}`);
    const certified = await certificateOf(doc, where, chain, config, header, headerBytes);
    return { rec, header, index, ...certified };
  }

  // Follow a config proof (a receipt's config_proof, or GET /v1/config/proof's steps): each
  // configuration change below `height`, each certified by the set then in force; resolves
  // to the configuration in force at `height`. `step` is told each change followed.
  async function followConfigProof(proof, where, chain, genesis, height, step) {
    let config = genesis, below = 0;
    for (const [n, s] of proof.entries()) {
      const w = `${where}[${n}]`;
      if (!s || typeof s !== "object" || Array.isArray(s)) fail(`${w}: expected an object`);
      const sh = field(s, "height", "int", w);
      if (!(below < sh && sh < height)) fail(`${w}.height: ${sh} is not above ${below} and below height ${height}`);
      below = sh;
      const got = await inBlock(s, w, chain, genesis, config, sh);
      if (!(await ed25519Verify(got.rec.body.signer, concat(RECORD_TAG, got.rec.bodyBytes), got.rec.sig))) fail(`${w}: signature does not verify`);
      if (got.rec.body.type !== CONFIG_TYPE) fail(`${w}: the record is a ${JSON.stringify(got.rec.body.type)}, not a configuration change`);
      try { config = await applyChange(config, got.rec.body); } catch (err) {
        if (err instanceof VerifyError) fail(`${w}: ${err.message}`);
        throw err;
      }
      step(`configuration change at height ${sh}, certified by the set then in force: version ${config.version} governs from height ${sh + 1}`);
    }
    return config;
  }

  // ---- checkpoints and log inclusion (SPEC section 11), as ledger/checkpoint.py ----
  // A checkpoint (GET /v1/log/checkpoint's JSON) certified by the validators in force at its
  // height, reached from genesis by `steps` (GET /v1/config/proof?to_height=H's). Resolves to
  // {height, logSize, logRoot, blockHash, names, config}; throws VerifyError.
  async function verifyCheckpoint(doc, steps, genesis) {
    if (!doc || typeof doc !== "object" || Array.isArray(doc)) fail("checkpoint: expected a JSON object");
    if (!Array.isArray(steps)) fail("config proof: 'steps' is not a list");
    await configOf(genesis);
    const height = field(doc, "height", "int", "checkpoint");
    const config = await followConfigProof(steps, "config_proof", genesis.chainId, genesis, height, () => {});
    const { header, headerBytes } = await certifiedHeaderOf(doc, "checkpoint", genesis.chainId, genesis, config, height);
    const got = await certificateOf(doc, "checkpoint", genesis.chainId, config, header, headerBytes);
    return { height, logSize: header.log_size, logRoot: header.log_root, blockHash: hex(got.blockHash),
             names: got.names, config: { version: config.version } };
  }

  // Log leaf `index` (an envelope's bytes) is in the log of a verified checkpoint: the RFC
  // 9162 audit path `path` (hex strings) leads to its log root. Throws VerifyError.
  async function verifyLogInclusion(checkpoint, index, envelope, path) {
    if (!Array.isArray(path)) fail(`log leaf ${index}: no proof`);
    const hashes = path.map((h, i) => unhex(h, `proof[${i}]`, 32));
    const root = await rootFromPath(index, checkpoint.logSize, await leafHash(envelope), hashes);
    if (!equal(root, checkpoint.logRoot)) fail(`log leaf ${index}: the proof leads to root ${hex(root)}, not the checkpoint's log root ${hex(checkpoint.logRoot)}`);
  }

  // Verify a receipt (object or JSON text) against a parsed genesis, following its
  // config_proof (SPEC section 6, v1.1: each configuration change below its height, each
  // certified by the set then in force; no config_proof reads as []), and every witness
  // cosignature it lists (SPEC section 11), by the witnesses of the configuration so
  // derived; `opts.witnesses` = k demands k of them. A sealed record (SPEC section 10)
  // verifies by its payload_digest alone; `opts.payload` = {salt, payload} (bytes) is also
  // checked against that digest, as is the pair a receipt carries (`payload`, `salt`: then
  // the record's `payload` is its value). Resolves to {ok: true, steps, record (the API's JSON shape),
  // sealed, header, signers, config, witnesses: count | null, cosignatures} or {ok: false,
  // steps, reason}.
  async function verifyReceipt(input, genesis, opts = {}) {
    const steps = [];
    const step = (s) => steps.push(s);
    try {
      let doc = input;
      if (typeof input === "string") {
        try { doc = JSON.parse(input); } catch (e) { fail(`not valid JSON (${e.message})`); }
      }
      if (!doc || typeof doc !== "object" || Array.isArray(doc)) fail("expected a JSON object");
      await configOf(genesis);
      const chain = field(doc, "chain", "string");
      if (chain !== genesis.chainId) fail(`receipt is for chain ${JSON.stringify(chain)}, genesis is ${JSON.stringify(genesis.chainId)}`);
      step(`chain is ${chain}, as in genesis`);
      const recordId = unhex(field(doc, "record_id", "string"), "receipt.record_id", 32);
      const envelope = unb64(field(doc, "envelope", "string"), "receipt.envelope");
      const rec = decodeEnvelope(envelope);
      if (!equal(await sha256(rec.bodyBytes), recordId)) fail("record_id is not the sha256 of the envelope's body");
      step("record_id = sha256(body)");
      if (rec.body.chain !== chain) fail(`record names chain ${JSON.stringify(rec.body.chain)}`);
      if (!(await ed25519Verify(rec.body.signer, concat(RECORD_TAG, rec.bodyBytes), rec.sig))) fail(`record ${hex(recordId)}: signature does not verify`);
      step("record signature (Ed25519) verifies");
      // SPEC section 10: a sealed record's receipt covers its payload_digest, never the
      // payload. The `payload` and `salt` (b64) a receipt carries for a reader the read
      // policy allows (receipts.py receipt_payload), and a pair given in `opts.payload`,
      // must match that digest.
      const sealed = rec.body.payload_digest !== undefined;
      const has = (k) => Object.prototype.hasOwnProperty.call(doc, k);
      let payload;
      if (has("payload") || has("salt")) {
        if (!sealed) fail("receipt carries a payload or salt, but its record is not sealed");
        const salt = unb64(field(doc, "salt", "string"), "receipt.salt");
        const data = unb64(field(doc, "payload", "string"), "receipt.payload");
        payload = toPlain(await checkSealedPayload(rec.body.payload_digest, salt, data, "receipt.payload"));
      }
      if (sealed) {
        step(`sealed record: the chain holds its payload_digest ${hex(rec.body.payload_digest)}, not the payload`);
        if (payload !== undefined) step("the payload and salt the receipt carries match this payload_digest (sha256 over ledger.payload.v1, salt, payload)");
        if (opts.payload) {
          await checkSealedPayload(rec.body.payload_digest, opts.payload.salt, opts.payload.payload, "payload");
          step("the payload and salt given match this payload_digest (sha256 over ledger.payload.v1, salt, payload)");
        }
      } else if (opts.payload) fail("a payload and salt were given, but the record is not sealed (its payload is inline)");
      const height = field(doc, "height", "int");

      const proof = Object.prototype.hasOwnProperty.call(doc, "config_proof") ? field(doc, "config_proof", "list") : [];
      const config = await followConfigProof(proof, "receipt.config_proof", chain, genesis, height, step);

      await checkRecordAuthority(config, rec.body);
      step(`signer is authorised by ${source(config)} for type ${rec.body.type}`);
      const got = await inBlock(doc, "receipt", chain, genesis, config, height, envelope);
      step(`header is for height ${height} of ${chain}, with the validator set of ${source(config)}`);
      step(`audit path (RFC 9162) leads from record ${got.index} to the header's records_root`);
      step(`certificate: precommits for block ${hex(got.blockHash).slice(0, 16)}… by ${got.names.join(", ")} (power ${got.power} of ${config.totalPower})`);
      const k = opts.witnesses || 0;
      let cosignatures = null;
      if (Object.prototype.hasOwnProperty.call(doc, "witnesses")) {
        cosignatures = await countWitnesses(doc.witnesses, config.witnesses, genesis.genesisHash, got.header, got.blockHash, "receipt", k);
        const names = cosignatures.map((c) => c.name).join(", ");
        step(`witness cosignatures: ${cosignatures.length} of the ${config.witnesses.length} witnesses of ${source(config)} cosigned this block${names ? ` (${names})` : ""}`);
      } else if (k) {
        fail(`receipt: no witness cosignatures ('witnesses' is missing); ${k} required for height ${height} (the configuration lists ${config.witnesses.length} witnesses)`);
      }
      return { ok: true, steps, signers: got.sigs.map(([i]) => i), header: got.header, blockHash: hex(got.blockHash),
               config: { version: config.version }, witnesses: cosignatures && cosignatures.length, cosignatures,
               record: { id: hex(recordId), ...plainBody(rec.body), ...(payload === undefined ? {} : { payload }) }, sealed };
    } catch (e) {
      if (!(e instanceof VerifyError)) throw e;
      return { ok: false, steps, reason: e.message };
    }
  }

  // ---- what a configuration change changes (the explorer's configuration page) ----
  // `prev` and `next` are configurations in genesis.json's JSON shapes (GET /v1/config's
  // `config`). The diff is a list of {section, op: "+" | "-" | "~", text}, in the order
  // organisations, members, validators, policies, governance, witnesses, read policies.
  function configDiff(prev, next) {
    const out = [];
    const add = (section, op, text) => out.push({ section, op, text });
    const list = (v) => (Array.isArray(v) ? v : []);
    const roles = (r) => list(r).join(", ") || "no role";
    const orgNames = (c) => list(c.organizations).map((o) => o.name);
    const members = (c) => {
      const m = new Map();
      for (const o of list(c.organizations)) for (const x of list(o.members)) m.set(x.pubkey, { org: o.name, name: x.name, roles: list(x.roles) });
      return m;
    };
    const [po, no] = [orgNames(prev), orgNames(next)];
    for (const n of no) if (!po.includes(n)) add("organisations", "+", `organisation ${n}`);
    for (const n of po) if (!no.includes(n)) add("organisations", "-", `organisation ${n}`);
    const [pm, nm] = [members(prev), members(next)];
    const who = (m) => `${m.org} / ${m.name}`;
    for (const [k, m] of nm) {
      const old = pm.get(k);
      if (!old) add("members", "+", `member ${who(m)} (${roles(m.roles)}) key ${k}`);
      else {
        if (who(old) !== who(m)) add("members", "~", `member key ${k}: ${who(old)} → ${who(m)}`);
        if (roles(old.roles) !== roles(m.roles)) add("members", "~", `member ${who(m)} roles: ${roles(old.roles)} → ${roles(m.roles)}`);
      }
    }
    for (const [k, m] of pm) if (!nm.has(k)) add("members", "-", `member ${who(m)} (${roles(m.roles)}) key ${k}`);
    const vals = (c) => new Map(list(c.validators).map((v) => [v.pubkey, v]));
    const [pv, nv] = [vals(prev), vals(next)];
    for (const [k, v] of nv) {
      const old = pv.get(k);
      if (!old) add("validators", "+", `validator ${v.name} (power ${v.power}) key ${k}`);
      else {
        if (old.name !== v.name) add("validators", "~", `validator key ${k}: name ${old.name} → ${v.name}`);
        if (old.power !== v.power) add("validators", "~", `validator ${v.name} power ${old.power} → ${v.power}`);
        for (const f of ["p2p", "api"]) if ((old[f] || "") !== (v[f] || "")) add("validators", "~", `validator ${v.name} ${f} ${old[f] || "none"} → ${v[f] || "none"}`);
      }
    }
    for (const [k, v] of pv) if (!nv.has(k)) add("validators", "-", `validator ${v.name} (power ${v.power}) key ${k}`);
    const policyDiff = (section, a, b) => {
      const [pa, pb] = [a || {}, b || {}];
      for (const t of Object.keys(pb).sort()) {
        if (!Object.prototype.hasOwnProperty.call(pa, t)) add(section, "+", `${t}: ${roles(pb[t])}`);
        else if (roles(pa[t]) !== roles(pb[t])) add(section, "~", `${t}: ${roles(pa[t])} → ${roles(pb[t])}`);
      }
      for (const t of Object.keys(pa).sort()) if (!Object.prototype.hasOwnProperty.call(pb, t)) add(section, "-", `${t}: ${roles(pa[t])}`);
    };
    policyDiff("policies", prev.policies, next.policies);
    const gov = (c) => {
      const g = c.governance || {};
      return `role ${g.role === undefined ? "admin (default)" : g.role}, threshold ${g.threshold === undefined ? "default (a majority)" : g.threshold}`;
    };
    if (gov(prev) !== gov(next)) add("governance", "~", `governance ${gov(prev)} → ${gov(next)}`);
    const wits = (c) => new Map(list(c.witnesses).map((w) => [w.pubkey, w.name]));
    const [pw, nw] = [wits(prev), wits(next)];
    for (const [k, n] of nw) if (!pw.has(k)) add("witnesses", "+", `witness ${n} key ${k}`);
    for (const [k, n] of pw) if (!nw.has(k)) add("witnesses", "-", `witness ${n} key ${k}`);
    policyDiff("read policies", prev.read_policies, next.read_policies);
    return out;
  }

  window.Ledger = { encode, decode, toPlain, hex, unhex, b64, unb64, sha256, parseGenesis,
                    maySubmit, verifyReceipt, payloadDigest, checkSealedPayload, plainBody, verifyCheckpoint, verifyLogInclusion, verifyBlock, verifyChain, configAt, applyChange, configOf, configDiff, decodeEnvelope, decodeHeader,
                    cosignedMessage, headerOf, checkCosignatures, countWitnesses, VerifyError };
})();
