// The explorer UI: hash routes, live blocks over SSE, in-browser receipt verification.
// Every value from the node is attacker-influenced (payloads above all): it reaches the page
// only through textContent and attributes set by el(), never as HTML.
"use strict";
(function () {
  const L = window.Ledger;
  const $ = (id) => document.getElementById(id);
  const state = { status: null, tip: 0, blocks: new Map(), nodeGenesis: null, userGenesis: null,
                  view: 0, es: null, lastEvent: 0 };
  const RECENT = 25;

  // ---- DOM helpers ----
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }
  const link = (href, text, cls) => el("a", { href, class: cls }, text);
  const code = (text) => el("code", {}, text);
  const short = (h) => (h && h.length > 20 ? `${h.slice(0, 10)}…${h.slice(-6)}` : h);
  const time = (ms) => (Number.isFinite(Number(ms)) ? new Date(Number(ms)).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : String(ms));
  const blockHref = (h) => `#/block/${h}`;
  const recordHref = (id) => `#/record/${id}`;
  const subjectHref = (s) => `#/subject/${encodeURIComponent(s)}`;
  function kv(pairs) {
    return el("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }
  function table(headers, rows, attrs) {
    return el("div", { class: "scroll" }, el("table", attrs || {},
      el("thead", {}, el("tr", {}, headers.map((h) => (h instanceof Node ? h : el("th", {}, h))))),
      el("tbody", {}, rows)));
  }
  function payloadText(p) {
    try { return JSON.stringify(p); } catch (e) { return String(p); }
  }
  function setView(...children) {
    const view = $("view");
    view.replaceChildren(...children);
    window.scrollTo(0, 0);
  }

  // ---- API ----
  async function api(path) {
    const resp = await fetch(path, { headers: { Accept: "application/json" } });
    const text = await resp.text();
    let doc = null;
    try { doc = JSON.parse(text); } catch (e) { /* not JSON */ }
    if (!resp.ok) {
      const err = new Error((doc && doc.detail) || `${resp.status} ${resp.statusText}`);
      err.status = resp.status; err.code = doc && doc.code;
      throw err;
    }
    return { doc, text };
  }

  // ---- genesis: the trust anchor ----
  const genesis = () => state.userGenesis || state.nodeGenesis;
  async function loadGenesisBytes(bytes, source) {
    const parsed = L.parseGenesis(bytes);
    return { bytes, parsed, source, hash: L.hex(await L.sha256(bytes)) };
  }
  function showGenesis() {
    const g = genesis();
    $("genesis-hash").textContent = g ? g.hash : "none";
    const src = $("genesis-source");
    src.replaceChildren();
    if (!g) src.append(el("span", { class: "warn" }, "(the node serves no genesis: load yours)"));
    else if (g === state.userGenesis) {
      src.append(`(your file ${g.source}`);
      const nodeHash = state.status && state.status.genesis_hash;
      if (nodeHash && nodeHash !== g.hash) src.append(el("span", { class: "warn" }, " — differs from the node's genesis"));
      else if (nodeHash) src.append(" — the node reports the same");
      src.append(")");
    } else src.append("(as served by this node — load your own copy to trust nothing the node says)");
    $("genesis-reset").hidden = !state.userGenesis;
  }
  async function initGenesis() {
    try {
      const resp = await fetch("/v1/genesis");
      if (!resp.ok) throw new Error(`GET /v1/genesis: ${resp.status}`);
      state.nodeGenesis = await loadGenesisBytes(new Uint8Array(await resp.arrayBuffer()), "node");
    } catch (e) {
      $("genesis-error").textContent = e.message;
    }
    showGenesis();
  }
  $("genesis-file").addEventListener("change", async (ev) => {
    const file = ev.target.files[0];
    ev.target.value = "";
    if (!file) return;
    $("genesis-error").textContent = "";
    try {
      state.userGenesis = await loadGenesisBytes(new Uint8Array(await file.arrayBuffer()), file.name);
    } catch (e) {
      $("genesis-error").textContent = `${file.name}: ${e.message}`;
    }
    showGenesis();
    route();
  });
  $("genesis-reset").addEventListener("click", () => { state.userGenesis = null; showGenesis(); route(); });
  const validatorName = (i) => {
    const g = genesis(), v = g && g.parsed.validators[i];
    return v ? v.name : `validator ${i}`;
  };
  function signerLabel(signerHex) {
    const g = genesis(), m = g && g.parsed.members.get(signerHex);
    return m ? `${m.organization} / ${m.name}` : "not a member in this genesis";
  }

  // ---- live blocks (SSE) ----
  function connect(from) {
    const es = new EventSource(`/v1/events?from_height=${Math.max(1, from)}`);
    state.es = es;
    es.onopen = () => { $("live").className = "live on"; $("live").textContent = "live"; };
    es.addEventListener("block", (ev) => {
      let d;
      try { d = JSON.parse(ev.data); } catch (e) { return; }
      if (!Number.isSafeInteger(d.height) || d.height <= state.lastEvent) return;
      state.lastEvent = d.height;
      state.blocks.set(d.height, d);
      for (const h of state.blocks.keys()) if (h <= d.height - RECENT) state.blocks.delete(h);
      setTip(d.height);
      const body = $("blocks-body");
      if (body) {
        const empty = body.querySelector(".empty");
        if (empty) empty.remove();
        body.prepend(blockRow(d, true));
        trimRows(body);
      }
    });
    // The browser would reconnect with the original from_height; resume after the last block.
    es.onerror = () => {
      es.close();
      $("live").className = "live off"; $("live").textContent = "reconnecting";
      setTimeout(() => connect(state.lastEvent + 1), 2000);
    };
  }
  function setTip(h) {
    if (h <= state.tip) return;
    state.tip = h;
    $("tip-height").textContent = String(h);
    if ($("status-height")) $("status-height").textContent = String(h);
  }
  function trimRows(body) { while (body.children.length > RECENT) body.lastChild.remove(); }
  function blockRow(d, fresh) {
    return el("tr", { class: fresh ? "fresh" : null, "data-height": d.height },
      el("td", { class: "num" }, link(blockHref(d.height), String(d.height))),
      el("td", {}, code(short(d.hash))),
      el("td", { class: "hide-phone" }, time(d.time_ms)),
      el("td", { class: "num" }, String(d.record_count)));
  }

  // ---- views ----
  async function homeView(token) {
    const { doc: st } = await api("/v1/status");
    if (token !== state.view) return;
    state.status = st; setTip(st.height); showGenesis();
    const rows = [...state.blocks.values()].sort((a, b) => b.height - a.height).map((d) => blockRow(d));
    setView(el("div", { class: "grid" },
      el("section", { class: "card" }, el("h2", {}, "Chain"), kv([
        ["chain", code(st.chain)], ["node", st.node], ["height", el("span", { id: "status-height" }, String(st.height))],
        ["last block", st.last_block_hash ? link(blockHref(st.height), short(st.last_block_hash), "mono") : "none yet"],
        ["genesis", code(short(st.genesis_hash))], ["mempool", String(st.mempool)],
      ])),
      el("section", { class: "card" }, el("h2", {}, "Validators"), table(["#", "name", "power", "link"],
        st.validators.map((v) => el("tr", {}, el("td", {}, String(v.index)), el("td", {}, v.name),
          el("td", { class: "num" }, String(v.power)), el("td", {}, v.connected ? "connected" : "down")))))),
    el("section", { class: "card" }, el("h2", {}, "Recent blocks ", el("span", { class: "muted" }, "(live)")),
      table(["height", "hash", el("th", { class: "hide-phone" }, "time"), "records"], rows, { id: "blocks" })));
    $("blocks").querySelector("tbody").id = "blocks-body";
    if (!rows.length) $("blocks-body").append(el("tr", { class: "empty" }, el("td", { colspan: 4, class: "muted" }, "no blocks yet: submit a record")));
  }

  async function blockView(token, height) {
    const { doc: b } = await api(`/v1/blocks/${encodeURIComponent(height)}`);
    await Promise.all(b.records.map(openSealed));
    if (token !== state.view) return;
    const h = b.header, sigs = b.cert.signatures;
    const g = genesis(), vals = g ? g.parsed.validators : [];
    const signed = new Set(sigs.map((s) => s.validator));
    const power = sigs.reduce((n, s) => n + ((vals[s.validator] || {}).power || 0), 0);
    setView(el("h1", {}, `Block ${b.height}`),
      el("div", { class: "pager" }, b.height > 1 ? link(blockHref(b.height - 1), "← previous") : null,
        link(blockHref(b.height + 1), "next →")),
      el("section", { class: "card" }, el("h2", {}, "Header"), kv([
        ["block hash", code(b.hash)], ["chain", code(h.chain)], ["time", time(h.time_ms)],
        ["prev_hash", b.height > 1 ? link(blockHref(b.height - 1), h.prev_hash, "mono") : el("span", {}, code(h.prev_hash), " (genesis hash)")],
        ["records_root", code(h.records_root)], ["record_count", String(h.record_count)],
        ["log_root", code(h.log_root)], ["log_size", String(h.log_size)],
        ["proposer", `${validatorName(h.proposer)} (#${h.proposer})`],
        ["validators_hash", code(h.validators_hash)], ["version", String(h.version)],
      ])),
      el("section", { class: "card", id: "certificate" }, el("h2", {}, "Commit certificate"), kv([
        ["round", String(b.cert.round)],
        ["signed by", el("span", { id: "cert-signers" }, sigs.map((s) => validatorName(s.validator)).join(", "))],
        ["not signed", vals.filter((v) => !signed.has(v.index)).map((v) => v.name).join(", ") || "—"],
        ["power", g ? `${power} of ${g.parsed.totalPower} (more than 2/3 needed)` : "load a genesis to see"],
      ]), el("div", { class: "actions" }, el("button", { type: "button", id: "verify-block",
        onclick: async (ev) => {
          await runBlockVerify(b.height, ev.target.closest("section").querySelector(".block-result"), b.witnesses);
          if (Array.isArray(b.witnesses) && b.witnesses.length) showCosignatures(token, b); // now against the verified configuration
        } },
      "Verify block in this browser")), el("div", { class: "block-result", id: "verify-result" })),
      cosignatureCard(b),
      el("section", { class: "card" }, el("h2", {}, `Records (${b.records.length})`),
        b.records.length ? recordTable(b.records, false) : el("p", { class: "muted" }, "an empty block")));
    if (Array.isArray(b.witnesses) && b.witnesses.length) showCosignatures(token, b);
  }

  // ---- witness cosignatures of a block (SPEC section 11) ----
  // The card lists what the node says; showCosignatures then checks each signature in this
  // browser over the block's own bytes, against the witnesses of the configuration governing
  // the height: the verified one when the page has followed the chain that far (a block's
  // Verify does), else the node's configuration list (GET /v1/config), and says which.
  function cosignatureCard(b) {
    const ws = b.witnesses;
    const body = !Array.isArray(ws)
      ? el("p", { class: "muted" }, "this node lists no witness cosignatures (it predates SPEC v1.1 witnesses)")
      : !ws.length ? el("p", { class: "muted", id: "no-cosignatures" }, "no cosignature listed for this block (witnesses cosign a block after it commits; a chain may list no witnesses)")
        : table(["witness", "public key", "signature"], ws.map((w, i) => el("tr", { "data-index": i, "data-pubkey": String(w.pubkey) },
          el("td", { class: "witness-name" }, "…"), el("td", {}, code(short(String(w.pubkey)))),
          el("td", {}, el("span", { class: "badge checking cosig-status" }, "checking…")))), { id: "cosignatures" });
    return el("section", { class: "card", id: "witnesses" },
      el("h2", {}, `Witness cosignatures (${Array.isArray(ws) ? ws.length : 0})`), body,
      el("p", { class: "muted", id: "cosignature-source" }));
  }
  // The witnesses ([{name, pubkey}]) of the configuration governing `height`, and where they
  // come from.
  async function witnessesAt(height, g) {
    const chain = state.chainCheck && state.chainCheck.genesis === g.parsed ? state.chainCheck : null;
    if (chain && chain.state.height >= height) {
      const c = L.configAt(chain.state, height);
      return { witnesses: c.witnesses, source: `the witnesses of ${c.version ? `configuration version ${c.version}` : "genesis"}, verified from genesis in this browser` };
    }
    let { doc: c } = await api("/v1/config");
    while (c.height > height && c.version > 0) c = (await api(`/v1/config?version=${c.version - 1}`)).doc;
    if (c.version === 0) return { witnesses: g.parsed.witnesses, source: "the witnesses of genesis" };
    return { witnesses: (c.config.witnesses || []).map((w) => ({ name: String(w.name), pubkey: String(w.pubkey) })),
             source: `the witnesses of configuration version ${c.version} as this node lists it (Verify block checks it from genesis)` };
  }
  async function showCosignatures(token, b) {
    const g = genesis(), src = $("cosignature-source");
    const rows = [...document.querySelectorAll("#cosignatures tbody tr")];
    const mark = (row, ok, text, title) => {
      const badge = row.querySelector(".cosig-status");
      badge.className = `badge cosig-status ${ok ? "verified" : "bad"}`;
      badge.textContent = text;
      if (title) badge.title = title;
    };
    try {
      if (!g) throw new Error("no genesis: load your genesis.json to check cosignatures");
      const [{ header, blockHash }, who] = await Promise.all([fetchBlockBytes(b.height).then(L.headerOf), witnessesAt(b.height, g)]);
      const checked = await L.checkCosignatures(b.witnesses, who.witnesses, (await L.configOf(g.parsed)).genesisHash, header, blockHash, `block ${b.height}`);
      if (token !== state.view) return;
      for (const c of checked) {
        const row = rows[c.index];
        row.querySelector(".witness-name").textContent = c.name === null ? "not a witness of this height" : c.name;
        mark(row, c.ok, c.ok ? "verified" : "bad", c.reason);
      }
      const good = checked.filter((c) => c.ok).length;
      src.textContent = `${good} of ${checked.length} cosignatures verified in this browser (Ed25519 over ledger.witness.v1 of this block's bytes), against ${who.source}.`;
    } catch (e) {
      if (token !== state.view) return;
      for (const row of rows) mark(row, false, "bad", e.message);
      src.textContent = `cosignatures not checked: ${e.message}`;
    }
  }

  // `proofs`: a last column with each record's log proof as checked in this browser
  // (`r.proved`: {ok, height} or {ok: false, reason}).
  // Whether `shown` (a node's JSON, as parsed) is `decoded` (a value of an envelope) in the
  // API's JSON view (ledger/jsonview.py: L.toPlain); integers beyond 2^53 compare as the
  // parser rounds them.
  function sameJson(shown, decoded) {
    if (typeof decoded === "bigint") return shown === Number(decoded);
    if (Array.isArray(decoded)) return Array.isArray(shown) && shown.length === decoded.length && decoded.every((x, i) => sameJson(shown[i], x));
    if (decoded instanceof Map && [...decoded.keys()].every((k) => typeof k === "string") && !(decoded.size === 1 && decoded.has("$map"))) {
      if (!shown || typeof shown !== "object" || Array.isArray(shown) || Object.keys(shown).length !== decoded.size) return false;
      for (const [k, x] of decoded) if (!Object.prototype.hasOwnProperty.call(shown, k) || !sameJson(shown[k], x)) return false;
      return true;
    }
    if (decoded instanceof Map || decoded instanceof Uint8Array || (typeof decoded === "number" && !Number.isFinite(decoded))) {
      try { return JSON.stringify(shown) === JSON.stringify(L.toPlain(decoded)); } catch (e) { return false; }
    }
    return shown === decoded;
  }
  // ---- sealed payloads (SPEC section 10) ----
  // A sealed record's JSON carries `payload_digest` (hex); `payload` (base64 of its msgpack
  // bytes) and `salt` (base64) only when the node serves them to this reader; `redacted`:
  // {height} after a redaction; `payload_status`: served | withheld | missing | redacted.
  // openSealed(r) sets r.seal (null for an inline record) to {digest, status, height, value,
  // error} and r.payload to the payload only once it matches the digest of the record's own
  // envelope, checked here (so the chart and the rows never show an unchecked payload).
  const SEAL_TEXT = { withheld: "payload withheld by read policy", missing: "payload not held by this node",
                      unknown: "payload not served (this node does not say why)" };
  async function openSealed(r) {
    let body = null;
    try { body = L.decodeEnvelope(L.unb64(r.envelope, "envelope")).body; } catch (e) { /* the node's fields as sent */ }
    const own = body && body.payload_digest !== undefined ? L.hex(body.payload_digest) : null;
    if (body ? own === null : r.payload_digest === undefined) { r.seal = null; return r; }
    const raw = { payload: r.payload, salt: r.salt };
    r.payload = undefined;
    const redacted = r.redacted && typeof r.redacted === "object";
    const known = ["served", "withheld", "missing", "redacted"];
    const status = known.includes(r.payload_status) ? r.payload_status
      : redacted ? "redacted" : raw.payload !== undefined ? "served" : "unknown";
    const seal = r.seal = { digest: own || String(r.payload_digest), status, value: undefined, error: null, pair: null,
                            height: redacted ? r.redacted.height : undefined };
    if (own && r.payload_digest !== undefined && r.payload_digest !== own) {
      seal.error = `the node's payload_digest ${r.payload_digest} is not the one in the record's envelope (${own})`;
      return r;
    }
    if (status !== "served") return r;
    try {
      if (raw.payload === undefined || raw.salt === undefined) throw new L.VerifyError("the node says the payload is served but sent no payload and salt");
      const pair = { salt: L.unb64(raw.salt, "salt"), payload: L.unb64(raw.payload, "payload") };
      seal.value = L.toPlain(await L.checkSealedPayload(seal.digest, pair.salt, pair.payload, "payload"));
      seal.pair = pair;
      r.payload = seal.value;
    } catch (e) {
      if (!(e instanceof L.VerifyError)) throw e;
      seal.error = `the payload served does not match the record's payload_digest: ${e.message}`;
    }
    return r;
  }
  // Badges of a record row or view: "sealed", and "redacted" after a redaction.
  function sealBadges(r) {
    if (!r.seal) return null;
    return [el("span", { class: "badge sealed", title: `payload kept off the chain; payload_digest ${r.seal.digest}` }, "sealed"),
      r.seal.status === "redacted" ? [" ", el("span", { class: "badge redacted" }, "redacted")] : null];
  }
  // What is shown in place of a sealed payload that is not shown (null: it is shown).
  function sealNote(seal) {
    if (seal.error) return `✗ ${seal.error}`;
    if (seal.status === "served") return null;
    if (seal.status === "redacted") return `payload redacted at height ${seal.height === undefined ? "?" : seal.height}`;
    return SEAL_TEXT[seal.status];
  }
  function payloadCell(r) {
    const note = r.seal ? sealNote(r.seal) : null;
    if (note === null) {
      return el("td", { class: "payload mono", title: payloadText(r.payload), "data-payload-status": r.seal ? "served" : null },
        r.seal ? [el("span", { class: "seal-ok", title: "matches the record's payload_digest (checked in this browser)" }, "✓ "), payloadText(r.payload)]
          : payloadText(r.payload));
    }
    return el("td", { class: r.seal.error ? "payload error" : "payload seal-note", title: note,
                      "data-payload-status": r.seal.error ? "mismatch" : r.seal.status }, note);
  }

  function recordTable(records, withHeight, proofs) {
    const head = [withHeight ? "height" : "#", "record", "type", withHeight ? "time" : "subject", "signer", "payload"];
    return table(proofs ? [...head, "in the log"] : head,
      records.map((r) => el("tr", { "data-id": r.id, "data-log-index": r.log_index, "data-proved": proofs && r.proved ? String(r.proved.ok) : null },
        el("td", { class: "num" }, withHeight ? link(blockHref(r.height), String(r.height)) : String(r.index)),
        el("td", {}, link(recordHref(r.id), short(r.id), "mono"), r.seal ? [" ", sealBadges(r)] : null),
        el("td", {}, r.type),
        el("td", {}, withHeight ? time(r.ts) : link(subjectHref(r.subject), r.subject)),
        el("td", {}, signerLabel(r.signer)),
        payloadCell(r),
        proofs ? el("td", { class: r.proved && r.proved.ok ? "proved" : "unproved", title: r.proved && !r.proved.ok ? r.proved.reason : null },
          !r.proved ? "—" : r.proved.ok ? `✓ proved in log (checkpoint ${r.proved.height})` : `✗ ${r.proved.reason}`) : null)));
  }

  // A record view's payload: inline, or a sealed record's (SPEC section 10) once checked
  // against its digest, or why it is not shown.
  function payloadCard(r) {
    const h2 = el("h2", {}, "Payload");
    if (!r.seal) return el("section", { class: "card" }, h2, el("pre", { class: "payload", id: "payload" }, JSON.stringify(r.payload, null, 2)));
    const note = sealNote(r.seal);
    const about = el("p", { class: "muted" }, "A sealed record keeps its payload off the chain: the chain holds only ",
      code("payload_digest"), " = sha256(\"ledger.payload.v1\\0\" + salt + payload), and nodes serve the payload to readers its read policy allows.");
    if (note !== null) {
      return el("section", { class: "card", id: "payload-card" }, h2,
        el("p", { class: r.seal.error ? "error" : "seal-note", id: "payload-note", "data-payload-status": r.seal.error ? "mismatch" : r.seal.status }, note), about);
    }
    return el("section", { class: "card", id: "payload-card" }, h2,
      el("p", { class: "seal-ok", id: "payload-check", "data-payload-status": "served" },
        "✓ matches the record's payload_digest (sha256 over ledger.payload.v1, the salt and the payload, checked in this browser)"),
      el("pre", { class: "payload", id: "payload" }, JSON.stringify(r.payload, null, 2)),
      kv([["salt", code(L.hex(r.seal.pair.salt))]]), about);
  }
  // A ledger.redact record: the records it names and its reason (SPEC section 10), from
  // its inline payload {change: packb([genesis_hash, [id, ...], reason]), approvals}.
  function redactionCard(r) {
    let ids, reason;
    try {
      const change = L.decode(L.unb64(r.payload && r.payload.change, "change"), "redaction change");
      if (!Array.isArray(change) || change.length !== 3 || !Array.isArray(change[1]) || typeof change[2] !== "string") throw new L.VerifyError("not [genesis_hash, [id, ...], reason]");
      ids = change[1].map((x) => (x instanceof Uint8Array ? L.hex(x) : String(x)));
      reason = change[2];
    } catch (e) {
      return el("section", { class: "card", id: "redaction" }, el("h2", {}, "Redaction"), el("p", { class: "error" }, `cannot read the change: ${e.message}`));
    }
    const approvals = Array.isArray(r.payload.approvals) ? r.payload.approvals.length : 0;
    return el("section", { class: "card", id: "redaction" }, el("h2", {}, "Redaction"), kv([
      ["redacts", el("ul", { class: "redacted-ids" }, ids.map((x) => el("li", {}, link(recordHref(x), x, "mono"))))],
      ["reason", reason], ["approvals", String(approvals)],
    ]));
  }

  async function recordView(token, id) {
    let r;
    try {
      r = (await api(`/v1/records/${encodeURIComponent(id)}`)).doc;
    } catch (e) {
      if (e.status !== 404 && e.status !== 400) throw e;
      if (token !== state.view) return;
      setView(el("h1", {}, "Record not found"), el("p", {}, e.message),
        el("p", {}, "Looking for a subject? ", link(subjectHref(id), `subject ${id}`)));
      return;
    }
    await openSealed(r);
    if (token !== state.view) return;
    // ts and nonce may exceed 2^53: show them exactly, from the envelope's own bytes.
    let exact = r;
    try { exact = L.decodeEnvelope(L.unb64(r.envelope, "envelope")).body; } catch (e) { /* shown as sent */ }
    const receiptBox = el("section", { class: "card", id: "receipt" }, el("h2", {}, "Receipt"));
    setView(el("h1", { class: "mono" }, `Record ${short(r.id)}`),
      el("section", { class: "card" }, kv([
        ["id", code(r.id)],
        ["status", el("span", {}, el("span", { class: `badge ${r.status}`, id: "record-status" }, r.status),
          r.seal ? [" ", el("span", { id: "record-badges" }, sealBadges(r))] : null)],
        r.height !== undefined && ["block", link(blockHref(r.height), `${r.height}`)],
        r.index !== undefined && ["index", String(r.index)],
        ["type", r.type], ["subject", link(subjectHref(r.subject), r.subject)],
        ["signer", el("span", {}, el("span", { id: "record-org" }, signerLabel(r.signer)), el("br"), code(r.signer))],
        ["time (client)", time(exact.ts)], ["nonce", String(exact.nonce)],
        r.seal && ["payload_digest", code(r.seal.digest)],
        r.seal && r.seal.status === "redacted" && ["redacted", el("span", { id: "record-redacted" }, "at height ",
          r.seal.height === undefined ? "?" : link(blockHref(r.seal.height), String(r.seal.height)))],
      ])),
      payloadCard(r),
      ...(r.type === "ledger.redact" ? [redactionCard(r)] : []),
      receiptBox);
    if (r.status !== "committed") {
      receiptBox.append(el("p", { class: "muted" }, "Pending: waiting for the record to be committed…"));
      setTimeout(() => { if (token === state.view) route(); }, 1000);
      return;
    }
    const { text } = await api(`/v1/records/${r.id}/receipt`);
    if (token !== state.view) return;
    const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    const out = el("div", { id: "verify-result" });
    receiptBox.append(
      el("p", {}, "Offline proof that this record is in block ", String(r.height),
        ": check it here, or with ", code("ledger verify receipt.json --genesis genesis.json"), "."),
      el("div", { class: "actions" },
        el("button", { id: "verify-button", type: "button", onclick: () => runVerify(text, out, r.seal && r.seal.pair) }, "Verify in this browser"),
        el("a", { class: "button secondary", href: url, download: `receipt-${r.id}.json`, id: "download-receipt" }, "Download receipt JSON")),
      out);
  }

  // Run a verification (receipt or block) against the genesis in use and show its result.
  async function runCheck(out, check, validText) {
    const g = genesis();
    out.replaceChildren(el("p", { class: "muted" }, "verifying…"));
    if (!g) { out.replaceChildren(el("p", { class: "error" }, "no genesis: load your genesis.json first")); return; }
    let res;
    try {
      res = await check(g.parsed);
    } catch (e) {
      res = { ok: false, steps: [], reason: `verifier error: ${e.message}` };
    }
    const against = el("p", { class: "muted" }, "against genesis sha256 ", code(g.hash),
      g === state.userGenesis ? ` (your file ${g.source})` : " (served by the node)");
    const steps = el("ol", {}, res.steps.map((s) => el("li", {}, "✓ ", s)));
    out.replaceChildren(res.ok
      ? el("div", { class: "result valid", "data-valid": "true" }, el("div", { class: "verdict" }, "VALID"),
        el("div", {}, validText(res)), steps, against)
      : el("div", { class: "result invalid", "data-valid": "false" }, el("div", { class: "verdict" }, "INVALID"),
        el("div", { class: "reason" }, res.reason), steps, against));
  }
  const inForce = (res) => (res.config && res.config.version ? `of configuration version ${res.config.version} (followed from genesis)` : "of genesis");
  // `pair`: a sealed record's checked {salt, payload}, verified with the receipt's digest too.
  const runVerify = (text, out, pair) => runCheck(out, (g) => L.verifyReceipt(text, g, pair ? { payload: pair } : {}),
    (res) => `Record ${short(res.record.id)} is in block ${res.header.height}, certified by the validators ${inForce(res)}` +
      (res.witnesses === null || res.witnesses === undefined ? " (the receipt lists no witness cosignatures)." : `, cosigned by ${res.witnesses} witness${res.witnesses === 1 ? "" : "es"}.`));
  async function fetchBlockBytes(height) {
    const resp = await fetch(`/v1/blocks/${height}`, { headers: { Accept: "application/msgpack" } });
    if (!resp.ok) throw new Error(`GET /v1/blocks/${height}: ${resp.status}`);
    return new Uint8Array(await resp.arrayBuffer());
  }
  // A block is checked under the configuration in force at its height: the chain is
  // followed from genesis (SPEC section 9) once, then from where it was left.
  async function checkBlock(height, g, cosignatures) {
    let chain = state.chainCheck && state.chainCheck.genesis === g ? state.chainCheck : null;
    const steps = [];
    if (!chain || chain.state.height < height) {
      const from = chain ? chain.state.height + 1 : 1, blocks = [];
      for (let h = from; h <= height; h++) blocks.push(await fetchBlockBytes(h));
      const r = await L.verifyChain(blocks, g, chain ? chain.state : null);
      if (!r.ok) return { ok: false, steps: r.steps, reason: r.reason };
      chain = state.chainCheck = { genesis: g, state: r.state };
      steps.push(...r.steps);
    }
    const config = L.configAt(chain.state, height);
    const bytes = await fetchBlockBytes(height);
    const res = await L.verifyBlock(bytes, config);
    if (res.ok && Array.isArray(cosignatures)) {
      // SPEC section 11: every cosignature the node lists, by a witness of this height's
      // configuration, over this block.
      try {
        const { header, blockHash } = await L.headerOf(bytes);
        const n = (await L.countWitnesses(cosignatures, config.witnesses, config.genesisHash, header, blockHash, `block ${height}`)).length;
        res.steps.push(`witness cosignatures: ${n} of the ${config.witnesses.length} witnesses of ${config.version ? `configuration version ${config.version}` : "genesis"} cosigned this block`);
        res.witnesses = n;
      } catch (e) {
        if (!(e instanceof L.VerifyError)) throw e;
        return { ok: false, steps: [...steps, ...res.steps], reason: e.message };
      }
    }
    return { ...res, steps: [...steps, ...res.steps], config: { version: config.version } };
  }
  const runBlockVerify = (height, out, cosignatures) => runCheck(out, (g) => checkBlock(height, g, cosignatures),
    (res) => `Block ${height} (${short(res.blockHash)}) is certified by the validators ${inForce(res)}${res.witnesses === undefined ? "" : `, cosigned by ${res.witnesses} witness${res.witnesses === 1 ? "" : "es"}`}.`);

  function verifyView() {
    const input = el("textarea", { id: "receipt-input", placeholder: "paste a receipt (JSON) here", spellcheck: "false" });
    const out = el("div", { id: "verify-result" });
    const file = el("input", { type: "file", id: "receipt-file", accept: ".json,application/json", hidden: "",
      onchange: async (ev) => {
        const f = ev.target.files[0];
        ev.target.value = "";
        if (f) { input.value = await f.text(); runVerify(input.value, out); }
      } });
    setView(el("h1", {}, "Verify a receipt"),
      el("section", { class: "card" },
        el("p", {}, "A receipt proves a record is on the chain using nothing but genesis.json. ",
          "It is checked here, in your browser, with WebCrypto; nothing is sent to the node."),
        input,
        el("div", { class: "actions" },
          el("button", { type: "button", id: "verify-button", onclick: () => runVerify(input.value, out) }, "Verify"),
          el("label", { class: "button secondary" }, "Open a receipt file…", file)),
        out));
  }

  // Numeric series of a subject: the payload itself, or one numeric field of a map payload.
  function numericFields(records) {
    const counts = new Map();
    for (const r of records) {
      const p = r.payload;
      if (typeof p === "number") counts.set("", (counts.get("") || 0) + 1);
      else if (p && typeof p === "object" && !Array.isArray(p)) {
        for (const [k, v] of Object.entries(p)) if (typeof v === "number" && Number.isFinite(v)) counts.set(k, (counts.get(k) || 0) + 1);
      }
    }
    return [...counts.entries()].sort((a, b) => (b[0] === "value") - (a[0] === "value") || b[1] - a[1]).map(([k]) => k);
  }
  const valueOf = (p, f) => (f === "" ? p : p && typeof p === "object" && !Array.isArray(p) ? p[f] : undefined);
  function chart(records, f, width) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = (tag, attrs, text) => {
      const n = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
      if (text !== undefined) n.textContent = text;
      return n;
    };
    const pts = records.map((r) => ({ r, x: Number(r.ts), y: valueOf(r.payload, f) }))
      .filter((p) => typeof p.y === "number" && Number.isFinite(p.y) && Number.isFinite(p.x));
    // Drawn at the box's own width, so labels keep their size on a phone.
    const W = Math.round(Math.max(300, Math.min(1000, width || 800))), H = W < 500 ? 200 : 260, pl = 56, pr = 12, pt = 12, pb = 28;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", id: "chart-svg", "data-points": pts.length });
    root.append(svg("title", {}, `${f || "value"} over time (${pts.length} points)`));
    if (!pts.length) return root;
    let [x0, x1] = [Math.min(...pts.map((p) => p.x)), Math.max(...pts.map((p) => p.x))];
    let [y0, y1] = [Math.min(...pts.map((p) => p.y)), Math.max(...pts.map((p) => p.y))];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    // On a narrow chart of one day, the axis shows times only (the day is in the tooltips).
    const oneDay = time(x0).slice(0, 10) === time(x1).slice(0, 10);
    const label = (x) => (W < 500 && oneDay ? time(x).slice(11) : time(x));
    const sx = (x) => pl + ((x - x0) / (x1 - x0)) * (W - pl - pr);
    const sy = (y) => H - pb - ((y - y0) / (y1 - y0)) * (H - pt - pb);
    root.append(svg("line", { class: "axis", x1: pl, y1: H - pb, x2: W - pr, y2: H - pb }),
      svg("line", { class: "axis", x1: pl, y1: pt, x2: pl, y2: H - pb }),
      svg("text", { x: pl - 6, y: pt + 10, "text-anchor": "end" }, String(+y1.toPrecision(6))),
      svg("text", { x: pl - 6, y: H - pb, "text-anchor": "end" }, String(+y0.toPrecision(6))),
      svg("text", { x: pl, y: H - 8 }, label(x0)),
      svg("text", { x: W - pr, y: H - 8, "text-anchor": "end" }, label(x1)),
      svg("polyline", { class: "line", points: pts.map((p) => `${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(" ") }));
    for (const p of pts) {
      const dot = svg("circle", { class: "dot", cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: 3.5 });
      dot.append(svg("title", {}, `${p.y} at ${time(p.x)} (block ${p.r.height})`));
      dot.addEventListener("click", () => { location.hash = recordHref(p.r.id); });
      root.append(dot);
    }
    return root;
  }

  // Records per history page: the newest page is shown first. `?page_size=N` (1-1000) on the
  // explorer's own address overrides it (the browser tests page through a few records).
  const HISTORY_PAGE = Math.min(1000, Math.max(1, Math.floor(Number(new URLSearchParams(location.search).get("page_size"))) || 500));

  const PROOF_PAGE = 100; // the node's bound on a page with proof=true
  // A datetime-local value (the browser's local time) as ms since the epoch, "" for none.
  const localMs = (v) => { if (!v) return ""; const t = new Date(v).getTime(); return Number.isFinite(t) ? String(t) : ""; };

  // A subject's history (GET /v1/subjects/{s}/history): cursor pages, newest first unless
  // asked otherwise, within a block-time range; older pages read at the block of the first
  // (`at_height`), newer records asked after the log size that block had, so nothing shows
  // twice or goes missing while blocks commit. With "prove", every record's inclusion proof
  // is checked here against a checkpoint verified from the genesis in use.
  async function subjectView(token, subject) {
    const opts = { order: "desc", since: "", until: "", prove: false };
    let records = [], older = null, newer = null, moreNewer = false, pin = null, field = null;
    const chartBox = el("div", { class: "chart", id: "chart" });
    const listBox = el("div", { id: "history" });
    const errorBox = el("p", { class: "error", id: "history-error" });
    const more = el("button", { type: "button", class: "secondary", id: "more", onclick: () => run(loadOlder) }, "Load older records");
    const newerButton = el("button", { type: "button", class: "secondary", id: "newer", onclick: () => run(loadNewer) }, "Load newer records");
    const count = el("span", { class: "muted", id: "history-count" });
    const proofNote = el("p", { class: "muted", id: "proof-note" });
    const orderBox = el("select", { id: "order", "aria-label": "order" },
      el("option", { value: "desc" }, "newest first"), el("option", { value: "asc" }, "oldest first"));
    const sinceBox = el("input", { id: "since", type: "datetime-local", step: "1", "aria-label": "block time from" });
    const untilBox = el("input", { id: "until", type: "datetime-local", step: "1", "aria-label": "block time to" });
    const proveBox = el("input", { id: "prove", type: "checkbox" });
    const form = el("form", { id: "history-form", class: "history-form", onsubmit: (ev) => {
      ev.preventDefault();
      const since = localMs(sinceBox.value), until = localMs(untilBox.value);
      if (since && until && Number(since) > Number(until)) { errorBox.textContent = "the time range ends before it starts"; return; }
      Object.assign(opts, { order: orderBox.value, since, until, prove: proveBox.checked });
      run(start);
    } },
    el("label", {}, "order ", orderBox), el("label", {}, "block time from ", sinceBox), el("label", {}, "to ", untilBox),
    el("label", {}, proveBox, " prove each record in the log"), el("button", { type: "submit", id: "history-apply" }, "Show"));

    const draw = () => {
      const fields = numericFields(records);
      if (field === null || !fields.includes(field)) field = fields.length ? fields[0] : null;
      chartBox.replaceChildren();
      if (field !== null) {
        const pick = el("select", { "aria-label": "field", onchange: (ev) => { field = ev.target.value; draw(); } },
          fields.map((k) => el("option", { value: k, selected: k === field ? "" : null }, k === "" ? "payload" : k)));
        chartBox.append(el("div", { class: "muted" }, "chart of ", fields.length > 1 ? pick : (field === "" ? "payload" : field)),
          chart(records, field, chartBox.clientWidth));
      } else chartBox.append(el("p", { class: "muted" }, "no numeric values to chart"));
      const shown = opts.order === "desc" ? [...records].reverse() : records;
      listBox.replaceChildren(records.length ? recordTable(shown, true, opts.prove) : el("p", { class: "muted" }, "no committed records for this subject"));
      const n = records.length, s = n === 1 ? "" : "s", range = opts.since || opts.until ? " in the time range" : "";
      const all = opts.order === "desc" ? older === null : !moreNewer;
      count.textContent = n === 0 ? "" : all ? ` (all ${n} record${s}${range}, ${opts.order === "desc" ? "newest" : "oldest"} first)`
        : ` (${opts.order === "desc" ? "newest" : "oldest"} ${n} record${s}${range})`;
      more.hidden = opts.order !== "desc" || older === null;
      newerButton.textContent = opts.order === "asc" && moreNewer ? "Load newer records" : "Check for newer records";
      const proved = records.filter((r) => r.proved && r.proved.ok).length;
      proofNote.textContent = !opts.prove ? "" : proved === n
        ? `All ${n} record${s} shown are proved in the log (RFC 9162) of checkpoints verified in this browser against the genesis in use.`
        : `${n - proved} of ${n} record${s} shown are NOT proved in the log.`;
      proofNote.className = opts.prove && proved !== n ? "error" : "muted";
    };

    const checkpoints = new Map();
    async function verifiedCheckpoint(height) { // null: the tip's
      if (height !== null && checkpoints.has(height)) return checkpoints.get(height);
      const g = genesis();
      if (!g) throw new Error("no genesis to verify against: load your genesis.json first");
      const { doc } = await api(`/v1/log/checkpoint${height === null ? "" : `?height=${height}`}`);
      const { doc: proof } = await api(`/v1/config/proof?to_height=${encodeURIComponent(doc.height)}`);
      const cp = await L.verifyCheckpoint(doc, proof.steps, g.parsed);
      checkpoints.set(cp.height, cp);
      return cp;
    }
    // One record's proof against `cp`: the row is drawn from what the node sent, so its id
    // and subject must be its envelope's, and the envelope must be log leaf `log_index`.
    async function prove(r, cp) {
      try {
        const envelope = L.unb64(r.envelope, "envelope");
        const rec = L.decodeEnvelope(envelope);
        if (L.hex(await L.sha256(rec.bodyBytes)) !== r.id) throw new L.VerifyError("the id is not the envelope's");
        if (rec.body.subject !== subject) throw new L.VerifyError("the envelope is of another subject");
        // the row and the chart show the node's fields: they must be the envelope's (as the
        // SDK's HistoryWalk checks), or the proof would vouch for values it does not cover
        const b = rec.body;
        if (r.type !== b.type || r.signer !== L.hex(b.signer) || !sameJson(r.ts, b.ts) || !sameJson(r.nonce, b.nonce)
            || (b.payload_digest ? r.payload_digest !== L.hex(b.payload_digest) : !sameJson(r.payload, b.payload))) throw new L.VerifyError("its fields are not its envelope's");
        await L.verifyLogInclusion(cp, r.log_index, envelope, r.proof);
        r.proved = { ok: true, height: cp.height };
      } catch (e) {
        r.proved = { ok: false, reason: e.message };
      }
    }
    async function fetchPage(order, cursor, atHeight) {
      const q = new URLSearchParams({ order, limit: String(opts.prove ? Math.min(PROOF_PAGE, HISTORY_PAGE) : HISTORY_PAGE) });
      if (opts.since) q.set("since", opts.since);
      if (opts.until) q.set("until", opts.until);
      if (cursor !== null) q.set(order === "desc" ? "before" : "after", String(cursor));
      if (atHeight !== null) q.set("at_height", String(atHeight));
      let cp = null;
      if (opts.prove) {
        cp = await verifiedCheckpoint(atHeight);
        q.set("at_height", String(cp.height));
        q.set("proof", "true");
      }
      const { doc } = await api(`/v1/subjects/${encodeURIComponent(subject)}/history?${q}`);
      await Promise.all(doc.records.map(openSealed));
      if (cp) {
        const same = doc.checkpoint && doc.checkpoint.height === cp.height && doc.checkpoint.log_size === cp.logSize;
        for (const r of doc.records) {
          if (same) await prove(r, cp);
          else r.proved = { ok: false, reason: `the page is not read at the verified checkpoint ${cp.height}` };
        }
      }
      return doc;
    }
    async function start() {
      records = []; older = null; moreNewer = false; pin = null;
      const doc = await fetchPage(opts.order, null, null);
      if (token !== state.view) return;
      pin = doc.checkpoint.height;
      if (opts.order === "desc") {
        records = [...doc.records].reverse(); // kept oldest first: the chart draws in time order
        older = doc.next;
        newer = doc.checkpoint.log_size - 1;
      } else {
        records = doc.records;
        moreNewer = doc.next !== null;
        newer = doc.next !== null ? doc.next : doc.checkpoint.log_size - 1;
      }
    }
    async function loadOlder() {
      const doc = await fetchPage("desc", older, pin);
      if (token !== state.view) return;
      records.unshift(...[...doc.records].reverse()); // an older page goes before what is shown
      older = doc.next;
    }
    async function loadNewer() { // records committed after what is shown: at the tip
      const doc = await fetchPage("asc", newer, null);
      if (token !== state.view) return;
      records.push(...doc.records);
      moreNewer = doc.next !== null;
      newer = doc.next !== null ? doc.next : Math.max(newer, doc.checkpoint.log_size - 1);
    }
    async function run(step) {
      more.disabled = newerButton.disabled = true;
      errorBox.textContent = "";
      try {
        await step();
      } catch (e) {
        if (token === state.view) errorBox.textContent = e.message;
      } finally {
        more.disabled = newerButton.disabled = false;
      }
      if (token === state.view) draw();
    }
    setView(el("h1", {}, "Subject ", el("span", { class: "mono", id: "subject-name" }, subject)),
      el("section", { class: "card" }, el("h2", {}, "Values over time"), chartBox),
      el("section", { class: "card" }, el("h2", {}, "History", count), form, errorBox, proofNote, listBox,
        el("div", { class: "actions" }, more, newerButton)));
    await run(start);
  }

  // ---- configuration versions (SPEC section 9) ----
  // Every version from GET /v1/config?version=V, the ledger.config record that made it (in
  // the block just below the first height it governs), who approved it (named by the
  // configuration then in force) and what it changed.
  function membersOf(config) {
    const m = new Map();
    for (const o of config.organizations || []) for (const x of o.members || []) m.set(x.pubkey, `${o.name} / ${x.name}`);
    return m;
  }
  const b64hex = (s) => { try { return L.hex(L.unb64(s, "key")); } catch (e) { return String(s); } };
  const OPS = { "+": "add", "-": "remove", "~": "change" };

  async function configView(token, selected) {
    const { doc: current } = await api("/v1/config");
    const n = current.version;
    const versions = await Promise.all([...Array(n + 1).keys()].map((v) => (v === n ? current
      : api(`/v1/config?version=${v}`).then((r) => r.doc))));
    const made = await Promise.all(versions.slice(1).map(async (c) => {
      const { doc: b } = await api(`/v1/blocks/${c.height - 1}`);
      return { height: c.height - 1, record: b.records.find((r) => r.type === "ledger.config") || null };
    }));
    if (token !== state.view) return;
    const info = versions.map((c, v) => {
      if (v === 0) return { c, diff: [], approvers: [], joins: [], signer: null, record: null, height: null };
      const { record, height } = made[v - 1], names = membersOf(versions[v - 1].config);
      const pairs = (k) => (record && record.payload && Array.isArray(record.payload[k]) ? record.payload[k] : []);
      const label = (key) => names.get(key) || `${short(key)} (not a member of version ${v - 1})`;
      const validatorName = (key) => ((c.config.validators || []).find((x) => x.pubkey === key) || {}).name || short(key);
      return { c, diff: L.configDiff(versions[v - 1].config, c.config), height, record,
               signer: record ? label(record.signer) : null,
               approvers: pairs("approvals").map((p) => label(b64hex(p[0]))),
               joins: pairs("joins").map((p) => validatorName(b64hex(p[0]))) };
    });
    const recordLink = (x) => (x.record ? link(recordHref(x.record.id), short(x.record.id), "mono") : "—");
    const rows = [...info].reverse().map((x) => el("tr", { "data-version": x.c.version },
      el("td", { class: "num" }, link(`#/config/${x.c.version}`, String(x.c.version))),
      el("td", { class: "num" }, link(blockHref(x.c.height), String(x.c.height))),
      el("td", {}, x.record ? [recordLink(x), " in block ", link(blockHref(x.height), String(x.height))] : "genesis"),
      el("td", { class: "approvers" }, x.approvers.join(", ") || "—"),
      el("td", { class: "num" }, x.c.version ? String(x.diff.length) : "—")));
    const cards = [...info].reverse().map((x) => {
      const cfg = x.c.config;
      const count = (cfg.organizations || []).reduce((k, o) => k + (o.members || []).length, 0);
      const summary = `${(cfg.organizations || []).length} organisations, ${count} members, ` +
        `${(cfg.validators || []).length} validators (power ${(cfg.validators || []).reduce((k, v) => k + Number(v.power), 0)})`;
      return el("section", { class: "card config-version", id: `version-${x.c.version}` },
        el("h2", {}, x.c.version ? `Version ${x.c.version}` : "Version 0 (genesis)"),
        kv([["governs from", el("span", {}, "height ", link(blockHref(x.c.height), String(x.c.height)))],
          x.record && ["changed by", el("span", {}, "record ", recordLink(x), " in block ", link(blockHref(x.height), String(x.height)))],
          x.record && ["submitted by", x.signer],
          x.record && ["approved by", el("span", { class: "approvers" }, x.approvers.join(", ") || "—")],
          x.joins.length > 0 && ["joined by", x.joins.join(", ")],
          ["in force", summary]]),
        x.c.version ? (x.diff.length
          ? el("ul", { class: "diff" }, x.diff.map((d) => el("li", { class: `op-${OPS[d.op]}`, "data-op": d.op, "data-section": d.section },
            el("span", { class: "op" }, d.op === "-" ? "−" : d.op), " ", el("span", { class: "muted" }, d.section), " ", d.text)))
          : el("p", { class: "muted" }, "no change to the configuration (a new version of the same one)")) : null,
        el("details", {}, el("summary", {}, "the whole configuration (JSON)"),
          el("pre", { class: "payload" }, JSON.stringify(cfg, null, 2))));
    });
    setView(el("h1", {}, "Configuration"),
      el("p", { class: "muted" }, `Version ${n} governs the next height. Each version was made by an approved `,
        code("ledger.config"), " record; it governs from the height after that record's block."),
      el("section", { class: "card" }, el("h2", {}, "Versions"),
        table(["version", "governs from", "changed by", "approved by", "changes"], rows, { id: "config-versions" })),
      ...cards);
    const target = selected !== undefined && $(`version-${selected}`);
    if (target) target.scrollIntoView();
  }

  // ---- routing ----
  async function route() {
    const token = ++state.view;
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    const kind = parts[0];
    let arg = parts.slice(1).join("/");
    try { arg = decodeURIComponent(arg); } catch (e) { /* keep it raw */ }
    try {
      if (kind === "block" && /^\d+$/.test(arg)) await blockView(token, arg);
      else if (kind === "record" && arg) await recordView(token, arg);
      else if (kind === "subject" && arg) await subjectView(token, arg);
      else if (kind === "verify") verifyView();
      else if (kind === "config") await configView(token, /^\d+$/.test(arg) ? arg : undefined);
      else await homeView(token);
    } catch (e) {
      if (token === state.view) setView(el("h1", {}, "Not available"), el("p", { class: "error", id: "view-error" }, e.message));
    }
  }
  $("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("search-input").value.trim();
    if (!q) return;
    if (/^\d+$/.test(q)) location.hash = blockHref(Number(q));
    else if (/^[0-9a-fA-F]{64}$/.test(q)) location.hash = recordHref(q.toLowerCase());
    else location.hash = subjectHref(q);
  });
  window.addEventListener("hashchange", route);

  async function start() {
    try {
      const { doc: st } = await api("/v1/status");
      state.status = st;
      $("chain-id").textContent = st.chain;
      $("node-name").textContent = st.node;
      setTip(st.height);
      $("tip-height").textContent = String(st.height);
      state.lastEvent = Math.max(0, st.height - RECENT);
      connect(state.lastEvent + 1);
    } catch (e) {
      $("chain-id").textContent = "unreachable";
    }
    await initGenesis();
    route();
  }
  start();
})();
