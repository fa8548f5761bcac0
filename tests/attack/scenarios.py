"""The attacks of issue 11, each against a real cluster (see ``harness.py``).

An attack function runs in its own process (``AttackContext``): it sets up (connects,
builds its payloads), calls ``ctx.ready()``, attacks until ``ctx.stopped()``, and returns
its counters (``5xx``: answers >= 500 other than 503 with Retry-After, which is a node
shedding load as the SPEC allows; ``503`` is counted apart). Every loop is bounded in time
and count; traffic goes to 127.0.0.1 only.

The Byzantine attacks play validator 3 (its real process is stopped first, so the three
honest nodes are exactly a quorum) through the product's own ``PeerNetwork``: handshake,
framing and dial order are whatever the transport does, so this attacker follows changes
to it. Only the frames above the transport are hostile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import os
import secrets
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import msgpack

from ledger.blocks import PREVOTE, Block, Certificate, Header, Vote
from ledger.consensus import BlockRequest, BlockResponse, SignedVote, decode_message, encode_message
from ledger.crypto import RECORD_TAG, PrivateKey, sha256
from ledger.encoding import packb
from ledger.errors import LedgerError
from ledger.genesis import Genesis
from ledger.records import Record
from node.runtime import CONSENSUS
from node.transport import PeerNetwork
from tests.attack.harness import MSGPACK, AttackContext, Harness, Scenario, Spec

# -- shared pieces ------------------------------------------------------------------------

# 65,005 bytes of msgpack: just under the 64 KiB payload limit
AMPLIFYING: list[dict[str, Any]] = [{}] * 65_000


#: anonymous attackers connect from this loopback address, honest clients and probes from
#: 127.0.0.1: a per-source limit can tell them apart, as it would tell two hosts apart
ATTACKER_ADDRESS = "127.0.0.2"


def attacker_client(timeout: float) -> httpx.Client:
    """An HTTP client whose connections come from ``ATTACKER_ADDRESS``."""
    return httpx.Client(timeout=timeout,
                        transport=httpx.HTTPTransport(local_address=ATTACKER_ADDRESS))


def count_status(counter: Counter[str], status: int) -> None:
    """Tally an HTTP status the attacker saw (``5xx`` excludes 503 load shedding)."""
    counter[str(status)] += 1
    if status >= 500 and status != 503:
        counter["5xx"] += 1


def tip(spec: Spec, timeout: float = 2.0) -> int | None:
    """The committed height an honest node reports (None if it does not answer)."""
    for i in (spec.load_node, *spec.honest):
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            return int(httpx.get(f"{spec.url(i)}/v1/status", timeout=timeout).json()["height"])
    return None


def max_frame() -> int:
    """The largest frame the product's transport accepts by default."""
    return int(inspect.signature(PeerNetwork.__init__).parameters["max_frame"].default)


async def open_peer(ctx: AttackContext, on_message: Callable[[int, bytes], None],
                    timeout: float = 40.0) -> PeerNetwork:
    """Listen (and dial) as the impersonated validator, with the product's transport;
    returns once every honest validator is linked (or ``timeout`` passed)."""
    spec = ctx.spec
    assert spec.byzantine is not None
    genesis = Genesis.load(spec.genesis_path)
    net = PeerNetwork(genesis=genesis, key=spec.validator_key(spec.byzantine),
                      listen=("127.0.0.1", spec.p2p_port(spec.byzantine)),
                      peers={i: ("127.0.0.1", spec.p2p_port(i)) for i in spec.honest},
                      on_message=on_message, queue_limit=1_000_000)
    await net.start()
    deadline = time.monotonic() + timeout
    while len(net.connected()) < len(spec.honest) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return net


def consensus_frame(message: Any) -> bytes:
    return bytes([CONSENSUS]) + encode_message(message)


def peer_report(net: PeerNetwork, **extra: Any) -> dict[str, Any]:
    return {"connected_at_end": net.connected(),
            "link_disconnects": net.stats["disconnects"],
            "frames_in": net.stats["frames_in"], "bytes_in": net.stats["bytes_in"],
            "frames_out": net.stats["frames_out"], "bytes_out": net.stats["bytes_out"],
            **extra}


# -- 1. Byzantine: nil prevotes for rounds 1..N of the current height ----------------------

def byzantine_future_rounds(ctx: AttackContext) -> dict[str, Any]:
    spec = ctx.spec
    byzantine = spec.byzantine
    assert byzantine is not None
    key = spec.validator_key(byzantine)
    chain = Genesis.load(spec.genesis_path).chain_id
    first_burst, per_second, max_votes = 5_000, 400, 40_000

    async def main() -> dict[str, Any]:
        net = await open_peer(ctx, lambda peer, data: None)
        linked = net.connected()
        await asyncio.to_thread(ctx.ready)
        sent, heights = 0, set[int]()
        height, round_ = (tip(spec) or 0) + 1, 1
        started = time.monotonic()
        while not ctx.stopped() and sent < max_votes:
            now_tip = await asyncio.to_thread(tip, spec, 1.0)
            if now_tip is not None and now_tip + 1 != height:
                height, round_ = now_tip + 1, 1
            heights.add(height)
            due = first_burst + int((time.monotonic() - started) * per_second)
            for _ in range(min(due - sent, max_votes - sent)):
                vote = Vote(chain, PREVOTE, height, round_, None)
                net.broadcast(consensus_frame(SignedVote.sign(vote, byzantine, key)))
                round_ += 1
                sent += 1
                if sent % 500 == 0:
                    await asyncio.sleep(0)
            await asyncio.sleep(0.25)
        out = peer_report(net, linked=linked, votes_sent=sent, heights=sorted(heights),
                          highest_round=round_ - 1)
        await net.stop()
        return out

    return asyncio.run(main())


# -- 2. Byzantine: block requests for large ranges -----------------------------------------

def byzantine_block_requests(ctx: AttackContext) -> dict[str, Any]:
    first_burst, per_second, max_requests = 24, 4, 400

    async def main() -> dict[str, Any]:
        net = await open_peer(ctx, lambda peer, data: None)
        linked = net.connected()
        await asyncio.to_thread(ctx.ready)
        sent = 0
        started = time.monotonic()
        while not ctx.stopped() and sent < max_requests:
            due = first_burst + int((time.monotonic() - started) * per_second)
            while sent < min(due, max_requests):
                net.broadcast(consensus_frame(BlockRequest(1)))  # "everything from height 1"
                sent += 1
            await asyncio.sleep(0.25)
        out = peer_report(net, linked=linked, requests_sent_per_peer=sent)
        await net.stop()
        return out

    return asyncio.run(main())


def prepare_large_blocks(h: Harness, quick: bool) -> None:
    """Commit 1 (quick) or 3 blocks of ~8 MB: 120 records of 64 KiB payloads each.

    Payloads are arrays of ~7,200 short strings (~860,000 JSON items per block): heavy to
    serve, yet within the mempool's decoded-cost bound (arrays of 65,000 fixints, 6 MB each
    by ``Record.cost``, no longer fit 120 to a batch), and not attack 7 themselves."""
    payload = [f"s{k % 10_000:07d}" for k in range(7_200)]
    heights: list[int] = []
    for b in range(1 if quick else 3):
        records = [h.record(payload, subject=f"big-{b}-{k}") for k in range(120)]
        resp = h.submit(h.extra.get("prep_node", 0), records, timeout=120)
        if resp.status_code != 202:
            raise RuntimeError(f"preparing large blocks: {resp.status_code} {resp.text[:300]}")
        heights.extend(r["height"] for r in resp.json()["results"])
    h.extra["big_heights"] = sorted(set(heights))
    h.extra["tip_after_prepare"] = max(heights)


# -- 3. Byzantine: a ~30 MB BlockResponse of garbage -----------------------------------------

def garbage_block_response(height: int, chain: str, proposer: int, limit: int) -> bytes:
    """A consensus frame just under ``limit`` bytes: a BlockResponse whose header and
    certificate are forged and whose records are well-formed envelopes (by a key nobody
    authorised) with amplifying payloads."""
    stranger = PrivateKey.generate()
    now = time.time_ns() // 1_000_000
    sample = Record.create(stranger, chain=chain, type="x", subject="g-0",
                           payload=AMPLIFYING, ts=now, nonce=0)
    count = (limit - 4096) // (len(sample.envelope) + 8)
    records = (sample, *(Record.create(stranger, chain=chain, type="x", subject=f"g-{k}",
                                       payload=AMPLIFYING, ts=now, nonce=k)
                         for k in range(1, count)))
    rnd = os.urandom
    header = Header(chain=chain, height=height, time_ms=now, prev_hash=rnd(32),
                    records_root=rnd(32), record_count=len(records), log_root=rnd(32),
                    log_size=10**6, proposer=proposer, validators_hash=rnd(32))
    cert = Certificate(height, 0, header.hash, tuple((i, rnd(64)) for i in range(3)))
    frame = consensus_frame(BlockResponse(Block(header, records, cert), None))
    assert len(frame) <= limit, (len(frame), limit)
    return frame


def byzantine_garbage_block_response(ctx: AttackContext) -> dict[str, Any]:
    spec = ctx.spec
    assert spec.byzantine is not None
    chain = Genesis.load(spec.genesis_path).chain_id
    limit = max_frame()
    frame = garbage_block_response((tip(spec) or 0) + 1, chain, spec.byzantine, limit)
    asked: list[int] = []

    def on_message(peer: int, data: bytes) -> None:
        if data[:1] == bytes([CONSENSUS]):
            with contextlib.suppress(LedgerError):
                if isinstance(decode_message(data[1:]), BlockRequest):
                    asked.append(peer)

    async def main() -> dict[str, Any]:
        net = await open_peer(ctx, on_message)
        linked = net.connected()
        await asyncio.to_thread(ctx.ready)
        unsolicited = answers = 0
        answered: Counter[int] = Counter()
        last = -1e9
        while not ctx.stopped():
            if unsolicited < 3 and time.monotonic() - last > 5:
                net.broadcast(frame)
                unsolicited += 1
                last = time.monotonic()
            while asked:
                peer = asked.pop()
                if answered[peer] < 2 and net.send(peer, frame):
                    answered[peer] += 1
                    answers += 1
            await asyncio.sleep(0.1)
        out = peer_report(net, linked=linked, frame_bytes=len(frame), frame_limit=limit,
                          unsolicited_broadcasts=unsolicited, answers=answers)
        await net.stop()
        return out

    return asyncio.run(main())


# -- 4. Anonymous: 16 MiB msgpack arrays of empty maps -------------------------------------

def anon_amplifying_batch(ctx: AttackContext) -> dict[str, Any]:
    spec = ctx.spec
    size = 16 * 1024 * 1024
    body = b"\xdd" + struct.pack(">I", size - 5) + b"\x80" * (size - 5)
    targets = [i for i in spec.honest if i != spec.load_node][:2]
    counter: Counter[str] = Counter()
    lock = threading.Lock()
    ctx.ready()

    def loop(node: int) -> None:
        with attacker_client(30) as client:
            for _ in range(10_000):
                if ctx.stopped():
                    return
                try:
                    status = client.post(f"{spec.url(node)}/v1/records", content=body,
                                         headers={"Content-Type": MSGPACK}).status_code
                except httpx.HTTPError as exc:
                    status, _ = 599, exc
                with lock:
                    count_status(counter, status)

    threads = [threading.Thread(target=loop, args=(i,)) for i in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return {"targets": targets, "body_bytes": len(body), **counter}


# -- 5. Anonymous: heavy reads (block JSON of an 8 MB block, SSE replay from height 1) -----

def anon_heavy_reads(ctx: AttackContext) -> dict[str, Any]:
    spec = ctx.spec
    big = spec.extra["big_heights"]
    top = spec.extra["tip_after_prepare"]
    targets = [i for i in spec.honest if i != spec.load_node][:2]
    counter: Counter[str] = Counter()
    lock = threading.Lock()
    ctx.ready()

    def block_json(node: int) -> None:
        with attacker_client(60) as client:
            for k in range(10_000):
                if ctx.stopped():
                    return
                try:
                    status = client.get(f"{spec.url(node)}/v1/blocks/{big[k % len(big)]}"
                                        ).status_code
                except httpx.HTTPError:
                    status = 599
                with lock:
                    count_status(counter, status)

    def sse(node: int) -> None:
        for _ in range(1_000):
            if ctx.stopped():
                return
            try:
                with attacker_client(30) as client, client.stream(
                        "GET", f"{spec.url(node)}/v1/events",
                        params={"from_height": "1"}) as resp:
                    with lock:
                        count_status(counter, resp.status_code)
                    if resp.status_code != 200:
                        time.sleep(0.5)
                        continue
                    for line in resp.iter_lines():
                        if ctx.stopped() or (line.startswith("id: ")
                                             and int(line[4:]) >= top):
                            break
                with lock:
                    counter["sse_replays"] += 1
            except httpx.HTTPError:
                with lock:
                    count_status(counter, 599)

    threads = [threading.Thread(target=block_json, args=(targets[-1],)) for _ in range(2)]
    threads += [threading.Thread(target=sse, args=(targets[0],)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return {"block_json_node": targets[-1], "sse_node": targets[0], "big_heights": big,
            **counter}


# -- 6. Anonymous: 600 slow uploads held open ------------------------------------------------

def slow_uploads(ctx: AttackContext) -> dict[str, Any]:
    spec = ctx.spec
    target = next(i for i in spec.honest if i != spec.load_node)
    head = (f"POST /v1/records HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: {MSGPACK}\r\nContent-Length: {1 << 20}\r\n\r\n").encode()
    socks: list[socket.socket] = []
    refused = 0
    for _ in range(600):
        try:
            s = socket.create_connection(("127.0.0.1", spec.base_port + target), timeout=2,
                                         source_address=(ATTACKER_ADDRESS, 0))
            s.sendall(head + b"\xdd\x00")
            socks.append(s)
        except OSError:
            refused += 1
    ctx.ready()
    trickled = 0
    while not ctx.wait(2.0):  # a byte every 2 s: slow, not dead
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(b"\x00")
                trickled += 1
    counter: Counter[str] = Counter()
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(64)
            if data.startswith(b"HTTP/1.1 "):
                count_status(counter, int(data[9:12]))
            elif not data:
                counter["closed_by_node"] += 1
        except BlockingIOError:
            counter["still_open"] += 1
        except OSError:
            counter["reset_by_node"] += 1
        s.close()
    return {"target": target, "connections": len(socks), "refused": refused,
            "bytes_trickled": trickled, **counter}


# -- 7. Authorised: amplifying payloads in ~13 MB batches ------------------------------------

def authorised_amplifying_payloads(ctx: AttackContext) -> dict[str, Any]:
    spec = ctx.spec
    key = spec.client_key()
    chain = Genesis.load(spec.genesis_path).chain_id
    target = next(i for i in spec.honest if i != spec.load_node)
    batches = int(spec.extra.get("batches", 2))
    counter: Counter[str] = Counter()

    def batch(b: int) -> bytes:
        now = time.time_ns() // 1_000_000
        return packb([Record.create(key, chain=chain, type="sensor.reading",
                                    subject=f"amp-{b}-{k}", payload=AMPLIFYING, ts=now,
                                    nonce=secrets.randbits(63)).envelope
                      for k in range(200)])

    first = batch(0)
    ctx.ready()
    accepted = 0
    with httpx.Client(timeout=60) as client:
        for b in range(batches):
            if ctx.stopped():
                break
            body = first if b == 0 else batch(b)
            try:
                resp = client.post(f"{spec.url(target)}/v1/records", content=body,
                                   headers={"Content-Type": MSGPACK})
                count_status(counter, resp.status_code)
                if resp.status_code == 202:
                    accepted += sum(r["status"] == "accepted" for r in resp.json()["results"])
            except httpx.HTTPError:
                count_status(counter, 599)
            if ctx.wait(3.0):
                break
    while not ctx.wait(0.5):
        pass
    return {"target": target, "batch_bytes": len(first), "batches": batches,
            "records_accepted": accepted, **counter}


def prepare_amplifying(h: Harness, quick: bool) -> None:
    h.extra["batches"] = 1 if quick else 2


# -- 8. Silent connections to every peer port, then a validator restarts ---------------------

def silent_peer_connections(ctx: AttackContext) -> dict[str, Any]:
    spec = ctx.spec
    per_port = 200
    counter: Counter[str] = Counter()

    async def hold(port: int) -> None:
        for _ in range(100_000):
            if ctx.stopped():
                return
            try:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(ATTACKER_ADDRESS, 0))
            except OSError:
                counter["connect_failed"] += 1
                await asyncio.sleep(0.1)
                continue
            counter["connections"] += 1
            try:
                while not ctx.stopped():  # say nothing; read whatever the node says
                    try:
                        data = await asyncio.wait_for(reader.read(4096), 0.5)
                    except TimeoutError:
                        continue
                    if not data:
                        counter["closed_by_node"] += 1
                        break
            except OSError:
                counter["reset_by_node"] += 1
            finally:
                writer.transport.abort()
            await asyncio.sleep(0.02)

    async def main() -> None:
        tasks = [asyncio.create_task(hold(spec.p2p_port(i)))
                 for i in range(spec.nodes) for _ in range(per_port)]
        await asyncio.sleep(1.0)
        await asyncio.to_thread(ctx.ready)
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    return {"per_port": per_port, "ports": spec.nodes, **counter}


def restart_one_validator(h: Harness, deadline: float) -> dict[str, Any]:
    """During the flood: kill validator 1, start it again, time until it commits a block
    the cluster decided after its restart."""
    assert h.monitors is not None
    victim = 1
    time.sleep(2.0)
    h.monitors.down.add(victim)
    h.cluster.kill(victim)
    target = h.cluster.height(0) + 1
    started = time.monotonic()
    h.cluster.start(victim)
    out: dict[str, Any] = {"restarted": victim, "target_height": target,
                           "restart_commit_s": None}
    try:
        h.cluster.wait_healthy(victim, timeout=30)
        out["healthy_s"] = round(time.monotonic() - started, 2)
        h.monitors.down.discard(victim)
        limit = max(deadline, time.monotonic()) + 30
        while time.monotonic() < limit:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                if h.cluster.height(victim) >= target:
                    out["restart_commit_s"] = round(time.monotonic() - started, 2)
                    break
            time.sleep(0.2)
    except RuntimeError as exc:
        out["error"] = str(exc)[-500:]
    finally:
        h.monitors.down.discard(victim)
    return out


# -- 9. Deep and odd inputs (no load) --------------------------------------------------------

def raw_payload_envelope(h: Harness, raw_payload: bytes, subject: str) -> tuple[bytes, str]:
    """An envelope signed by the authorised key whose payload is ``raw_payload`` verbatim
    (the body map in SPEC key order); and the record id (hex)."""
    p = msgpack.Packer(use_bin_type=True)
    now = time.time_ns() // 1_000_000
    fields: list[tuple[str, Any]] = [
        ("chain", h.chain), ("type", "sensor.reading"), ("subject", subject), ("payload", None),
        ("ts", now), ("nonce", secrets.randbits(63)), ("signer", h.key.public)]
    body = p.pack_map_header(len(fields))
    for k, v in fields:
        body += p.pack(k) + (raw_payload if k == "payload" else p.pack(v))
    return packb([body, h.key.sign(RECORD_TAG + body)]), sha256(body).hex()


def deep_and_odd_checks(h: Harness) -> dict[str, Any]:
    url = h.url(0)
    out: dict[str, Any] = {}
    fives = 0

    def get(path: str, **kw: Any) -> int:
        nonlocal fives
        try:
            status = httpx.get(f"{url}{path}", timeout=30, **kw).status_code
        except httpx.HTTPError:
            status = 599  # reset or timed out: as bad as a 500
        fives += status >= 500
        return status

    def post(body: bytes, content_type: str, params: dict[str, str] | None = None
             ) -> httpx.Response | None:
        nonlocal fives
        try:
            resp = httpx.post(f"{url}/v1/records", content=body, params=params,
                              headers={"Content-Type": content_type}, timeout=40)
        except httpx.HTTPError:
            fives += 1
            return None
        fives += resp.status_code >= 500
        return resp

    # a 600-deep payload: either valid everywhere (committed, and every view answers) or
    # rejected; never a 5xx
    env, rid = raw_payload_envelope(h, b"\x91" * 600 + b"\x01", "deep-600")
    resp = post(packb([env]), MSGPACK, {"wait": "commit", "timeout": "15"})
    res = resp.json()["results"][0] if resp is not None and resp.status_code == 202 else {}
    deep: dict[str, Any] = {"submit": None if resp is None else resp.status_code,
                            "result": res.get("status"), "height": res.get("height")}
    if res.get("height"):
        deep["views"] = {
            "record": get(f"/v1/records/{rid}"),
            "receipt": get(f"/v1/records/{rid}/receipt"),
            "block": get(f"/v1/blocks/{res['height']}"),
            "history": get("/v1/subjects/deep-600/history")}
    views = deep.get("views", {}).values()
    deep["ok"] = deep["submit"] in (202, 400) and all(s < 500 for s in views)
    out["deep_600_payload"] = deep

    # msgpack ext type -1 in its non-fixext forms (ext8, ext16, ext32): must be rejected
    for name, raw in (("ext8_type_minus1", b"\xc7\x04\xff\x00\x00\x00\x01"),
                      ("ext16_type_minus1", b"\xc8\x00\x04\xff\x00\x00\x00\x01"),
                      ("ext32_type_minus1", b"\xc9\x00\x00\x00\x04\xff\x00\x00\x00\x01")):
        env, rid = raw_payload_envelope(h, raw, name)
        resp = post(packb([env]), MSGPACK, {"wait": "commit", "timeout": "5"})
        status = None if resp is None else resp.status_code
        first = resp.json()["results"][0] if status == 202 and resp else {}
        result = first.get("status")
        state = get(f"/v1/records/{rid}")
        out[name] = {"submit": status, "result": result, "committed_at": first.get("height"),
                     "record_lookup": state,
                     "ok": result == "rejected" or (status is not None and 400 <= status < 500
                                                   and state == 404)}

    resp = post(b"[" * 100_000, "application/json")
    out["json_100k_brackets"] = {"status": None if resp is None else resp.status_code,
                                 "ok": resp is not None and resp.status_code == 400}
    status = get("/v1/blocks/%C2%B2")
    out["block_height_superscript_two"] = {"status": status, "ok": status == 400}
    status = _sse_status(f"{url}/v1/events", {"Last-Event-ID": "9" * 5_000})
    fives += status >= 500
    out["last_event_id_5000_digits"] = {"status": status, "ok": status < 500}

    good = h.record({"ok": 1}, subject="json-repeated")
    b64 = base64.b64encode(good.envelope).decode()
    item = f'{{"envelope": "{b64}"}}'
    body = f'{{"records": [{item}], "records": [{item}]}}'.encode()
    resp = post(body, "application/json")
    out["json_repeated_key"] = {"status": None if resp is None else resp.status_code,
                                "ok": resp is not None and resp.status_code == 400}
    resp = post(json.dumps({"records": [{"envelope": noncanonical_b64(h)}]}).encode(),
                "application/json")
    out["json_noncanonical_base64"] = {"status": None if resp is None else resp.status_code,
                                       "ok": resp is not None and resp.status_code == 400}
    out["5xx_count"] = fives
    return out


def _sse_status(url: str, headers: dict[str, str]) -> int:
    try:
        with httpx.stream("GET", url, headers=headers, timeout=10) as resp:
            return resp.status_code
    except httpx.HTTPError:
        return 599


def noncanonical_b64(h: Harness) -> str:
    """Base64 of a fresh envelope with non-zero padding bits (decodes to the same bytes
    under a lenient decoder)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    for k in range(64):
        env = h.record({"k": k}, subject="json-b64" + "x" * k).envelope
        if len(env) % 3:
            text = base64.b64encode(env).decode()
            pad = text.count("=")
            last = text[-pad - 1]
            bumped = alphabet[alphabet.index(last) + 1]  # its low bits are the padding bits
            out = text[:-pad - 1] + bumped + "=" * pad
            assert base64.b64decode(out) == env
            return out
    raise AssertionError("no envelope with padding")


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("byzantine_future_rounds",
             "validator 3 (Byzantine) floods signed nil prevotes for rounds 1..N of the "
             "current height: a 5,000-vote burst, then 400/s",
             byzantine_future_rounds, byzantine=3,
             original="5,000 votes froze the loops 15 s; 12,000 over 30 s: wait=commit timed out"),
    Scenario("byzantine_block_requests",
             "validator 3 sends 24 BlockRequest(from height 1) to every node, then 4/s, over a "
             "chain of ~8 MB blocks",
             byzantine_block_requests, prepare=prepare_large_blocks, byzantine=3,
             original="20 requests stalled a node 43 s, 87 -> 580 MB"),
    Scenario("byzantine_garbage_block_response",
             "validator 3 sends a BlockResponse as large as the transport accepts (forged "
             "header and certificate, well-formed amplifying records), unsolicited and in answer",
             byzantine_garbage_block_response, byzantine=3,
             original="one 29 MB response took a node to 2.2 GB"),
    Scenario("anon_amplifying_batch",
             "two anonymous clients POST 16 MiB msgpack arrays of empty maps to nodes 0 and 1 "
             "in a loop; commits measured through node 2",
             anon_amplifying_batch, load_node=2,
             original="1.27 GB, 3 s stalls; commits through a third node 23/s -> 0.36/s"),
    Scenario("anon_heavy_reads",
             "8 SSE clients replaying from height 1 on node 0, 2 clients GETting an 8 MB block "
             "as JSON from node 1; commits through node 2",
             anon_heavy_reads, prepare=prepare_large_blocks, load_node=2,
             original="block JSON 5 s on the loop; 8 SSE clients stalled it 10 s"),
    Scenario("slow_uploads",
             "600 connections POST with Content-Length 1 MiB and trickle a byte every 2 s",
             slow_uploads, load_node=2, original="/healthz answered 503"),
    Scenario("authorised_amplifying_payloads",
             "the authorised client submits ~13 MB batches of 200 records, each payload 65,000 "
             "empty maps, to node 1; commits through node 0",
             authorised_amplifying_payloads, prepare=prepare_amplifying, load_node=0,
             original="every node to 1.7 GB (one to 4.2 GB) after one 13 MB batch"),
    Scenario("silent_peer_connections",
             "200 silent TCP connections to every validator's peer port (re-opened when "
             "closed); validator 1 is killed and restarted during the flood",
             silent_peer_connections, during=restart_one_validator, load_node=0,
             original="a restarted validator stayed isolated"),
    Scenario("deep_and_odd_inputs",
             "600-deep payload, ext -1 in ext8/16/32 forms, 100,000 '[' JSON, /v1/blocks/%C2%B2, "
             "5,000-digit Last-Event-ID, JSON repeated key and non-canonical base64",
             None, checks=deep_and_odd_checks,
             original="ext8 -1 committed (audit passes); 500s on deep payloads and odd input"),
)}
