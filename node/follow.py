"""Following the chain over the public HTTP API (issue 13).

Peer links open only between validator keys of the configuration in force (and the next
committed one), so a node that is not a validator of the height being decided and has no
peer link cannot use block sync: a node made by ``ledger node init`` before the change that
adds it commits, or a validator the configuration removed. Such a node *follows*: it asks a
validator's API (``api`` of the validators of the configuration in force, after the node's
own ``follow`` URLs) for its tip (``GET /v1/status``), fetches the blocks it lacks as their
exact bytes (``GET /v1/blocks/{h}``, ``Accept: application/msgpack``, SPEC section 4: the
bytes carry the block's own certificate) and hands each to the node exactly as a block
response from a peer: ``Node.check_block_response`` (the certificate verified under that
height's configuration, sizes, record signatures), then the core's block-sync commit (the
one chain-extension rule, ``check_block``), which writes it to the store. Nothing served is
trusted: a block that does not check is refused, the URL is left for another and backed
off. Following stops the moment the node has a peer link or is a validator of the height
being decided (normal consensus and block sync take over) and resumes when it has neither.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from ledger.blocks import peek_cert_obj
from ledger.consensus import BlockResponse, MessageReceived
from ledger.consensus.messages import encode_block_response, peek_block_response
from ledger.errors import CertificateError, LedgerError

if TYPE_CHECKING:
    from node.runtime import Node

log = logging.getLogger("ledger.node.follow")

FOLLOW_PEER = -1  # the "sender" of followed blocks (the core ignores a block response's)
IDLE_S = 1.0  # between checks whether following is needed, and polls of a caught-up tip
TIMEOUT_S = 10.0  # one HTTP request
COMMIT_WAIT_S = 10.0  # at most, for a batch handed to the core to be committed
STALL_S = 1.0  # ... or until nothing is committed for this long with no event queued
BACKOFF_S = (0.5, 30.0)  # after a failure: first, and most (doubling)
LOG_EVERY_S = 5.0  # progress lines at most this often
CHECK_AHEAD = 4  # blocks downloaded and being checked ahead of the one handed to the core


class FollowError(Exception):
    """A follow source failed (unreachable, wrong answer, or a block that does not check)."""


def _url(text: str) -> str:
    text = text.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


class Follower:
    """The HTTP follow loop of one node (``run`` until cancelled)."""

    def __init__(self, node: Node, urls: list[str] | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 batch: int | None = None, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.node = node
        self.configured = [_url(u) for u in (node.config.follow if urls is None else urls)]
        self.transport = transport
        self.batch = batch or node.core.config.sync_batch
        self.clock = clock
        self.followed = 0  # blocks committed through following (metrics)
        self.refused = 0  # served blocks that did not check
        self.source = 0  # index into sources() of the URL in use
        self.failures = 0  # consecutive failures (backoff)
        self._logged = 0.0
        self.commit_wait_s = COMMIT_WAIT_S

    def needed(self) -> bool:
        node = self.node
        return (not node._stopping and node.core.index is None
                and not node.connected_peers())

    def sources(self) -> list[str]:
        """The node's ``follow`` URLs, then the ``api`` of every other validator of the
        configuration in force (the newest the node holds)."""
        node = self.node
        config = node.core.config_at(node.store.height + 1)
        own = {f"http://{node.config.api[0]}:{node.config.api[1]}",
               f"https://{node.config.api[0]}:{node.config.api[1]}"}
        out: list[str] = []
        for u in [*self.configured,
                  *(_url(v.api) for v in config.validators
                    if v.api and v.pubkey != node.key.public)]:
            if u not in out and u not in own:
                out.append(u)
        return out

    def _client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        ca = self.node.config.tls_ca
        if ca is not None:
            verify = ssl.create_default_context(cafile=str(ca))
        return httpx.AsyncClient(timeout=TIMEOUT_S, transport=self.transport, verify=verify)

    async def run(self) -> None:
        async with self._client() as http:
            while not self.node._stopping:
                if not self.needed():
                    self.failures = 0
                    await asyncio.sleep(IDLE_S)
                    continue
                sources = self.sources()
                if not sources:
                    await asyncio.sleep(IDLE_S)
                    continue
                url = sources[self.source % len(sources)]
                try:
                    caught_up = await self.round(http, url)
                except (FollowError, LedgerError) as exc:
                    failed: BaseException = exc
                except Exception as exc:  # a bug must not end following silently
                    log.exception("following %s: unexpected error", url)
                    failed = exc
                else:
                    self.failures = 0
                    if caught_up:
                        await asyncio.sleep(IDLE_S)
                    continue
                self.failures += 1
                self.source += 1  # another URL next time
                # one pass over the sources at the first delay, then doubling per pass
                passes = (self.failures - 1) // len(sources)
                delay = min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** min(passes, 10))
                log.warning("following %s failed (%s); trying %s in %.1f s", url, failed,
                            sources[self.source % len(sources)], delay)
                await asyncio.sleep(delay)

    async def _get(self, http: httpx.AsyncClient, url: str, limit: int,
                   headers: dict[str, str] | None = None) -> bytes:
        """The body of ``GET url``, at most ``limit`` bytes; FollowError otherwise."""
        try:
            async with http.stream("GET", url, headers=headers) as resp:
                if resp.status_code != 200:
                    raise FollowError(f"GET {url}: HTTP {resp.status_code}")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise FollowError(f"GET {url}: more than {limit} bytes")
                return bytes(body)
        except httpx.HTTPError as exc:
            raise FollowError(f"GET {url}: {exc!r}") from exc

    def _check(self, height: int, data: bytes, last_cert: Any
               ) -> asyncio.Future[BlockResponse]:
        """Block ``height``'s bytes as a block response, checked in a worker thread as one
        from a peer (``Node.check_block_response``); the future raises LedgerError."""
        node = self.node
        body = encode_block_response(data, last_cert)
        try:
            header = peek_block_response(body)
            if header is None or header.height != height:
                raise LedgerError(f"block {height}: the bytes are another block's")
            if not node.within_block_limits(header, len(body)):
                raise LedgerError(f"block {height}: over the block limits")
        except LedgerError as exc:
            failed: asyncio.Future[BlockResponse] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        return asyncio.ensure_future(asyncio.to_thread(node.check_block_response, header,
                                                       body))

    async def _hand_over(self, checks: deque[tuple[int, asyncio.Future[BlockResponse]]],
                         queued: int, start: int) -> tuple[int, FollowError | None, bool]:
        """Wait for the oldest check and hand its block to the core: (the height handed
        over last, the refusal if the block does not check, whether to stop)."""
        node = self.node
        height, check = checks.popleft()
        try:
            response = await check
        except CertificateError as exc:
            if height > node.store.height + 1 and queued >= start:
                # certified by a set a change still to commit below it may govern:
                # commit what came before, then ask again
                log.debug("block %d set aside until below it commits: %s", height, exc)
                return queued, None, True
            return queued, FollowError(f"refused block {height}: {exc}"), True
        except LedgerError as exc:
            return queued, FollowError(f"refused block {height}: {exc}"), True
        node.events.put_nowait(MessageReceived(FOLLOW_PEER, response))
        return height, None, False

    async def tip(self, http: httpx.AsyncClient, url: str) -> int:
        body = await self._get(http, f"{url}/v1/status", 1 << 20)
        try:
            doc: Any = json.loads(body)
            chain, height = doc["chain"], doc["height"]
        except (ValueError, KeyError, TypeError) as exc:
            raise FollowError(f"{url}/v1/status: not a status ({exc})") from exc
        if chain != self.node.genesis.chain_id or not isinstance(height, int):
            raise FollowError(f"{url}/v1/status: another chain ({chain!r})")
        return height

    async def round(self, http: httpx.AsyncClient, url: str) -> bool:
        """One round with ``url``: its tip, then up to ``batch`` blocks past ours handed to
        the core and waited for. True when there was nothing to fetch."""
        node = self.node
        tip = await self.tip(http, url)
        start = node.store.height + 1
        if tip < start:
            return True
        stop = min(tip + 1, start + self.batch)
        limit = node.max_block_response()
        # the previous block's certificate as the source holds it now (the one the next
        # block's proposal carried, where the one this node took with it may have been the
        # source's own): the core adopts it only if it is valid, as from a peer
        last_cert: Any = None
        if start > 1:
            previous = await self._get(http, f"{url}/v1/blocks/{start - 1}", limit,
                                       {"Accept": "application/msgpack"})
            try:
                last_cert = peek_cert_obj(previous)
            except LedgerError as exc:
                self.refused += 1
                raise FollowError(f"refused block {start - 1}: {exc}") from exc
        queued = start - 1
        refused: FollowError | None = None
        # Each block is checked in a worker thread while the next ones download (up to
        # CHECK_AHEAD at once: the signature checks release the GIL, so they use every
        # core) and handed to the core in height order as its check ends.
        checks: deque[tuple[int, asyncio.Future[BlockResponse]]] = deque()
        stopped = False
        fetch_failed: FollowError | None = None
        try:
            for height in range(start, stop):
                if not self.needed():
                    break
                try:
                    data = await self._get(http, f"{url}/v1/blocks/{height}", limit,
                                           {"Accept": "application/msgpack"})
                except FollowError as exc:  # the blocks before it are still handed over
                    fetch_failed = exc
                    break
                checks.append((height, self._check(height, data, last_cert)))
                try:
                    last_cert = peek_cert_obj(data)
                except LedgerError:  # this block is refused (its check says why): no more
                    break
                while checks and (len(checks) >= CHECK_AHEAD or checks[0][1].done()):
                    queued, refused, stopped = await self._hand_over(checks, queued, start)
                    if stopped:
                        break
                if stopped:
                    break
            while checks and not stopped:
                queued, refused, stopped = await self._hand_over(checks, queued, start)
        finally:
            for _, check in checks:  # after a refusal: the checks in flight are not used
                check.cancel()
            if checks:
                await asyncio.gather(*(c for _, c in checks), return_exceptions=True)
        # the blocks handed to the core: committed (block-sync commit) or not
        before = start - 1
        deadline = self.clock() + self.commit_wait_s
        seen, moved = node.store.height, self.clock()
        while node.store.height < queued and self.clock() < deadline and self.needed():
            await asyncio.sleep(0.02)
            if node.store.height != seen:
                seen, moved = node.store.height, self.clock()
            elif node.events.empty() and self.clock() - moved >= STALL_S:
                break  # the core took everything handed to it and commits no more
        self.followed += max(0, min(node.store.height, queued) - before)
        node.metrics.blocks_followed = self.followed
        if refused is None and node.store.height < queued and self.needed():
            if node.store.height == before:
                refused = FollowError(f"block {node.store.height + 1} was not committed "
                                      "(it does not extend the chain)")
            else:
                # progress, then a block not committed: the core may still hold, for that
                # height, a block another source served earlier (block sync keeps the first
                # it is given until it tries it): not this source's fault; the next round
                # hands it again
                log.info("following %s: block %d not committed yet, asking again", url,
                         node.store.height + 1)
        if refused is not None:
            self.refused += 1
            raise refused
        if fetch_failed is not None:  # after the blocks before it were committed, counted
            raise fetch_failed
        if queued < start:
            return False
        now = self.clock()
        if now - self._logged >= LOG_EVERY_S or node.store.height >= tip:
            self._logged = now
            log.info("following %s: height %d of %d", url, node.store.height, tip)
        return False
