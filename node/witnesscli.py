"""``ledger witness`` (SPEC sections 8 and 11): follow the chain, verify every block exactly
as ``ledger audit`` does, cosign each height, post the cosignatures — and never cosign two
histories, across restarts and across nodes.

The loop, one *round* at a time (``Witness.round``):

1. ask every node (a ``BlockSource``) for its tip; a node that does not answer is skipped
   this round and retried with backoff;
2. check every node still serves the chain this witness verified: its block at
   ``min(its tip, our height)`` must be the one we hold (blocks link by hash, so that block
   stands for every one below it); if not, the first height that differs is found (binary
   search) and the witness stops: ``height N: ... a forked history``;
3. fetch the next heights (at most ``batch``) from every node that has them; two nodes
   serving different blocks at one height stop the witness: ``height N: nodes A and B
   serve different blocks (split view)``;
4. verify them with the audit's own verifier (``ledger.audit.audit_chunks`` continuing the
   ``ChainVerifier``: no second validation path); a bad block stops it: ``height N: why``;
5. **save the state durably** (``node.files.write_durably``): the audit state (every block
   hash, the log, the configuration, the uniqueness sets: ``ledger.auditstate``) and the
   cosignatures of the new heights;
6. only then post each cosignature (``POST /v1/log/cosignatures``) to every node that has
   its height.

After a restart the witness continues from its saved state: steps 2 and 4 compare every
served block with the saved hashes and continue the saved log, so it cannot cosign a
different block at a height it cosigned, nor a chain that does not extend the one it
cosigned; the cosignatures of the last saved batch are posted again (the crash may have
come between saving and posting; a node keeps a cosignature once).

Stopping on a split view or a fork (exit 1) is deliberate: it is evidence for people, not a
condition to wait out; a supervisor that restarts the witness gets the same refusal.

State file format (version 1): ``STATE_MAGIC``, one msgpack map, then the SHA-256 of all
before it::

    {"version": 1, "genesis_hash": bin(32), "witness": bin(32),
     "cosigned": [[height, block_hash: bin(32), log_size, log_root: bin(32), sig: bin(64)], ...],
     "audit": bin}   # ledger.auditstate.state_to_bytes: the verifier at the saved height

``cosigned`` holds the cosignatures of the last saved batch (re-posted after a restart);
its last entry is the latest cosigned checkpoint.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from ledger.audit import AuditReport, BlockSummary, BytesChunk, ChainVerifier, audit_chunks
from ledger.auditstate import AuditStateError, seal, state_from_bytes, state_to_bytes, unseal
from ledger.crypto import PrivateKey, is_valid_signature
from ledger.errors import AuditError, LedgerError
from ledger.genesis import Genesis
from ledger.witness import Cosignature, cosigned_message, witness_keys
from node.cli import _first_difference, _hash_of
from node.client import LedgerClient, NodeError
from node.files import write_durably

STATE_MAGIC = b"ledger-witness-state\n"
STATE_VERSION = 1
HASH = 32
CHUNK = 16  # blocks a worker process checks at a time (as ledger audit's --chunk)
BATCH = 256  # heights verified, saved and posted together (one state write per batch)
KEEP_UNPOSTED = 4096  # cosignatures kept in memory for nodes that lag or are down
POLL_S = 10.0  # a caught-up witness re-polls this often even without an event
BACKOFF_S = (0.5, 30.0)  # after a failed round: first delay, and the most (doubling)


class WitnessStateError(LedgerError):
    """A saved witness state cannot be used (unreadable, altered, another chain or key)."""

    code = "bad_witness_state"


class Refusal(Exception):
    """The witness refuses to go on: a fork, a split view or a bad block at ``height``."""

    def __init__(self, height: int, reason: str) -> None:
        super().__init__(f"height {height}: {reason}")
        self.height = height


class Unavailable(Exception):
    """No node could be reached this round (transient: retried with backoff)."""


# -- the state file ---------------------------------------------------------------------------

@dataclass
class WitnessState:
    """What the witness verified (the audit's verifier and every block hash) and the
    cosignatures of its last saved batch."""

    verifier: ChainVerifier
    hashes: bytearray
    cosigned: list[Cosignature] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.verifier.height

    def hash_at(self, height: int) -> bytes:
        return bytes(self.hashes[(height - 1) * HASH:height * HASH])

    def to_bytes(self, witness: bytes) -> bytes:
        doc = {"version": STATE_VERSION, "genesis_hash": self.verifier.genesis.hash,
               "witness": witness,
               "cosigned": [[c.height, c.block_hash, c.log_size, c.log_root, c.sig]
                            for c in self.cosigned],
               "audit": state_to_bytes(self.verifier, bytes(self.hashes))}
        return seal(STATE_MAGIC, doc)

    @classmethod
    def from_bytes(cls, data: bytes, genesis: Genesis, witness: bytes) -> WitnessState:
        doc = unseal(data, STATE_MAGIC, "witness state", WitnessStateError)
        if type(doc) is not dict or doc.get("version") != STATE_VERSION:
            raise WitnessStateError("witness state is not of version 1")
        if doc.get("genesis_hash") != genesis.hash:
            raise WitnessStateError(f"witness state is of another chain, not this genesis "
                                    f"({genesis.chain_id!r}, {genesis.hash.hex()})")
        if doc.get("witness") != witness:
            saved = doc.get("witness")
            shown = saved.hex() if isinstance(saved, bytes) else repr(saved)
            raise WitnessStateError(f"witness state is of witness {shown}, not of this "
                                    f"identity {witness.hex()}")
        try:
            verifier, hashes = state_from_bytes(doc["audit"], genesis)
        except AuditStateError as exc:
            raise WitnessStateError(f"witness state: {exc}") from exc
        except (KeyError, TypeError) as exc:
            raise WitnessStateError("witness state has no audit state") from exc
        state = cls(verifier, bytearray(hashes))
        try:
            for height, block_hash, log_size, log_root, sig in doc["cosigned"]:
                cosig = Cosignature(witness, height, block_hash, sig, log_size, log_root)
                if not (1 <= height <= verifier.height
                        and block_hash == state.hash_at(height)
                        and is_valid_signature(witness, cosigned_message(
                            genesis.hash, height, block_hash, log_size, log_root), sig)):
                    raise WitnessStateError(f"witness state: the cosignature of height "
                                            f"{height} is not of a block it verified")
                state.cosigned.append(cosig)
        except WitnessStateError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise WitnessStateError(f"witness state: bad 'cosigned' list ({exc})") from exc
        return state


def load_state(path: Path, genesis: Genesis, witness: bytes) -> WitnessState | None:
    """The saved state at ``path`` (None if there is no file yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WitnessStateError(f"{path}: cannot read the witness state "
                                f"({exc.strerror})") from exc
    try:
        return WitnessState.from_bytes(data, genesis, witness)
    except WitnessStateError as exc:
        raise WitnessStateError(f"{path}: {exc}") from exc


# -- where blocks come from ---------------------------------------------------------------------

class BlockSource(Protocol):
    """A node as the witness sees it: a tip, block bytes by height, and a place to post."""

    name: str

    def tip(self) -> int:
        """The node's height; NodeError if it cannot be asked."""

    def block_bytes(self, height: int) -> bytes | None:
        """The exact bytes of block ``height`` (SPEC section 4), None beyond the tip."""

    def post(self, cosig: Cosignature) -> bool:
        """``POST /v1/log/cosignatures``: True if the node stored it (False: it had it)."""


class HttpSource:
    """A node's HTTP API (``LedgerClient``)."""

    def __init__(self, url: str, genesis: Genesis, *, verify: str | bool = True,
                 timeout: float = 10.0) -> None:
        self.name = url.rstrip("/")
        self.genesis = genesis
        self.client = LedgerClient(self.name, verify=verify, timeout=timeout)
        self._verify = verify

    def tip(self) -> int:
        status = self.client.status()
        served = status.get("genesis_hash")
        if status.get("chain") not in (None, self.genesis.chain_id) or (
                isinstance(served, str) and served != self.genesis.hash.hex()):
            raise WrongChain(f"{self.name} serves chain {status.get('chain')!r} (genesis "
                             f"{served}), not {self.genesis.chain_id!r} "
                             f"({self.genesis.hash.hex()})")
        height = status.get("height")
        if type(height) is not int or height < 0:
            raise NodeError(f"{self.name}/v1/status: no height", 200)
        return height

    def block_bytes(self, height: int) -> bytes | None:
        return self.client.block_bytes(height)

    def post(self, cosig: Cosignature) -> bool:
        return bool(self.client.post_cosignature(cosig)["stored"])

    def watch(self, from_height: int | None, wake: threading.Event, stop: threading.Event) -> None:
        """Set ``wake`` on each block event (``GET /v1/events``, resuming after the last one
        seen) until ``stop``; reconnects with backoff. Run in a daemon thread."""
        delay = BACKOFF_S[0]
        nxt = from_height
        while not stop.is_set():
            client = LedgerClient(self.name, verify=self._verify, timeout=POLL_S)
            try:
                for event in client.events(from_height=nxt):
                    if type(event.get("height")) is int:
                        nxt = event["height"] + 1
                    delay = BACKOFF_S[0]
                    wake.set()
                    if stop.is_set():
                        return
            except LedgerError:
                pass
            finally:
                client.close()
            stop.wait(delay)
            delay = min(BACKOFF_S[1], delay * 2)


class WrongChain(LedgerError):
    """A node serves another chain than the genesis given."""


def _transient(exc: Exception) -> bool:
    """A failure worth retrying: no answer, or a 5xx/429 from the node."""
    if isinstance(exc, NodeError):
        return exc.status is None or exc.status >= 500 or exc.status == 429
    return False


# -- the witness ----------------------------------------------------------------------------

@dataclass
class Hooks:
    """Points a test can act at (``tests/faulty_witness.py``): the shipped witness does
    nothing there."""

    def after_save(self) -> None:
        """The state naming the new cosignatures is on disk; none is posted yet."""


@dataclass
class Witness:
    """One witness key following one or more nodes (``round`` is one step of the loop)."""

    genesis: Genesis
    key: PrivateKey
    state_path: Path
    sources: list[BlockSource]
    workers: int = 1
    batch: int = BATCH
    log: Callable[[str], None] = print
    hooks: Hooks = field(default_factory=Hooks)
    state: WitnessState = field(init=False)
    #: per node: the height up to which its chain was matched with ours
    matched: dict[str, int] = field(default_factory=dict)
    #: per node: the highest height whose cosignature it took (or refused as already held)
    posted: dict[str, int] = field(default_factory=dict)
    #: cosignatures not yet taken by every node, by height
    unposted: dict[int, Cosignature] = field(default_factory=dict)
    down: dict[str, str] = field(default_factory=dict)
    #: the tips of the last round
    last_tips: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        loaded = load_state(self.state_path, self.genesis, self.key.public)
        self.state = loaded or WitnessState(ChainVerifier(self.genesis), bytearray())
        # the last saved batch may not have reached the nodes: post it again
        self.unposted = {c.height: c for c in self.state.cosigned}
        if loaded is not None:
            last = f"; last cosigned height {loaded.cosigned[-1].height}" \
                if loaded.cosigned else ""
            self.log(f"witness: state {self.state_path} loaded: verified to height "
                     f"{loaded.height}{last}")

    @property
    def height(self) -> int:
        return self.state.height

    # one round ---------------------------------------------------------------------------

    def tips(self) -> dict[str, int]:
        """Every reachable node's tip (the others are noted in ``down``)."""
        tips: dict[str, int] = {}
        for source in self.sources:
            try:
                tips[source.name] = source.tip()
            except WrongChain:
                raise
            except NodeError as exc:
                if not _transient(exc):
                    raise
                self._down(source.name, exc)
            else:
                if source.name in self.down:
                    self.log(f"witness: {source.name} answers again")
                    del self.down[source.name]
        if not tips:
            raise Unavailable("no node answers: " + "; ".join(self.down.values()))
        return tips

    def _down(self, name: str, exc: Exception) -> None:
        if name not in self.down:
            self.log(f"witness: {name} does not answer ({exc}); retrying")
        self.down[name] = str(exc)

    def round(self, until: int | None = None) -> int:
        """One step: match every node's chain with ours, verify, save and cosign up to
        ``batch`` new heights (not past ``until``), post what nodes lack. Returns the
        number of new heights verified (each cosigned where the key is a witness). Raises
        Refusal (fork, split view, bad block), Unavailable (no node answers), NodeError (a
        node refuses a cosignature)."""
        tips = self.last_tips = self.tips()
        by_name = {s.name: s for s in self.sources}
        for name, tip in tips.items():
            try:
                self._match(by_name[name], tip)
            except NodeError as exc:
                if not _transient(exc):
                    raise
                self._down(name, exc)
        live = {n: t for n, t in tips.items() if n not in self.down}
        target = max(live.values(), default=self.height)
        if until is not None:
            target = min(target, until)
        new = 0
        if target > self.height:
            new = self._advance(live, min(target, self.height + self.batch))
        self._post(live)
        return new

    def _match(self, source: BlockSource, tip: int) -> None:
        """Check ``source`` serves our chain up to ``min(tip, our height)``."""
        upto = min(tip, self.height)
        if upto <= self.matched.get(source.name, 0):
            return

        def theirs(height: int) -> bytes | None:
            return _hash_of(source.block_bytes(height))

        data = source.block_bytes(upto)
        if data is None:
            return  # its tip moved back under us (a restore?): matched when it serves it
        if _hash_of(data) != self.state.hash_at(upto):
            # the audit's fork search (``ledger audit --db/--node`` against its saved state)
            differs = _first_difference(self.state.hashes, upto, theirs) or upto
            raise Refusal(differs, f"{source.name} serves a block that is not the one this "
                          f"witness verified and cosigned (saved hash "
                          f"{self.state.hash_at(differs).hex()}): a forked history; "
                          f"not cosigning it")
        self.matched[source.name] = upto

    def _fetch(self, live: dict[str, int], upto: int) -> list[bytes]:
        """Blocks ``height+1..`` (up to ``upto``) from every live node that has them, cross
        checked; stops early where no node serves the next one."""
        by_name = {s.name: s for s in self.sources}
        blocks: list[bytes] = []
        for height in range(self.height + 1, upto + 1):
            served: dict[str, tuple[bytes, bytes | None]] = {}
            for name, tip in live.items():
                if tip < height or name in self.down:
                    continue
                try:
                    data = by_name[name].block_bytes(height)
                except NodeError as exc:
                    if not _transient(exc):
                        raise
                    self._down(name, exc)
                    continue
                if data is not None:
                    served[name] = (data, _hash_of(data))
            if not served:
                break
            names = list(served)
            first = names[0]
            for other in names[1:]:
                if served[other][1] != served[first][1]:
                    raise Refusal(height, f"nodes {first} and {other} serve different blocks "
                                  "(split view); not cosigning")
            for name in names:
                self.matched[name] = height
            blocks.append(served[first][0])
        return blocks

    def _advance(self, live: dict[str, int], upto: int) -> int:
        start = self.height + 1
        blocks = self._fetch(live, upto)
        if not blocks:
            return 0
        history = self.state.verifier.history
        mine: list[bool] = []
        summaries: list[BlockSummary] = []

        def on_block(summary: BlockSummary) -> None:
            # the configuration governing this height: the one in force before its block
            mine.append(self.key.public in witness_keys(history.at(summary.height)))
            summaries.append(summary)
            self.state.hashes.extend(summary.hash)

        try:
            report: AuditReport = audit_chunks(
                self.genesis, [BytesChunk(start + i, list[bytes | None](blocks[i:i + CHUNK]))
                               for i in range(0, len(blocks), CHUNK)],
                workers=self.workers if len(blocks) >= 64 else 1,
                on_block=on_block, verifier=self.state.verifier)
        except AuditError as exc:
            raise Refusal(exc.height, f"{exc.reason}; not cosigning") from exc
        assert report.height == start + len(blocks) - 1
        cosigs = [self._cosign(s) for s, ok in zip(summaries, mine, strict=True) if ok]
        self.state.cosigned = cosigs
        write_durably(self.state_path, self.state.to_bytes(self.key.public))
        self.hooks.after_save()
        for c in cosigs:
            self.unposted[c.height] = c
        while len(self.unposted) > KEEP_UNPOSTED:
            del self.unposted[min(self.unposted)]
        end = report.height
        span = f"height {end}" if start == end else f"heights {start}..{end}"
        if cosigs:
            self.log(f"witness: verified and cosigned {span}; tip {report.tip_hash.hex()}; "
                     f"state saved")
        else:
            self.log(f"witness: verified {span} (this key is not a witness there: nothing "
                     f"to cosign); state saved")
        return len(summaries)

    def _cosign(self, s: BlockSummary) -> Cosignature:
        sig = self.key.sign(cosigned_message(self.genesis.hash, s.height, s.hash, s.log_size,
                                             s.log_root))
        return Cosignature(self.key.public, s.height, s.hash, sig, s.log_size, s.log_root)

    def _post(self, live: dict[str, int]) -> None:
        by_name = {s.name: s for s in self.sources}
        for name, tip in live.items():
            if name in self.down:
                continue
            done = self.posted.get(name, 0)
            stored = 0
            for height in sorted(h for h in self.unposted if done < h <= tip):
                try:
                    if by_name[name].post(self.unposted[height]):
                        stored += 1
                except NodeError as exc:
                    if _transient(exc):
                        self._down(name, exc)
                        break
                    if exc.problem_code == "unknown_height":
                        break  # its tip moved back under us (a restore?): asked again later
                    if exc.status == 409:
                        raise Refusal(height, f"{name} refuses this witness's cosignature "
                                      f"as a split view ({exc}); it serves another block "
                                      "than the one cosigned") from exc
                    raise
                self.posted[name] = height
            if stored:
                self.log(f"witness: {name} stored {stored} cosignature"
                         f"{'' if stored == 1 else 's'} (to height {self.posted[name]})")
        if self.unposted and len(self.posted) == len(self.sources):
            everywhere = min(self.posted.values())
            for height in [h for h in self.unposted if h <= everywhere]:
                del self.unposted[height]

    def pending_posts(self, tips: dict[str, int]) -> bool:
        """Whether some reachable node still lacks a cosignature it could take."""
        return any(self.posted.get(n, 0) < h <= t for n, t in tips.items()
                   for h in self.unposted)


# -- the command ----------------------------------------------------------------------------

def run(witness: Witness, *, once: bool, until: int | None, stop: threading.Event,
        wake: threading.Event, retry_for: float,
        clock: Callable[[], float] = time.monotonic) -> int:
    """The loop: rounds until stopped (or, with ``once``/``until``, the target reached and
    posted). Returns the exit code. Failures that may pass (no node answers, a node that
    does not take its cosignatures) are retried with backoff; with a target, for at most
    ``retry_for`` seconds."""
    failing_since: float | None = None
    delay = BACKOFF_S[0]
    target = until

    def backoff(why: str) -> bool:
        """Wait before the next round; False when a bounded run has waited long enough."""
        nonlocal failing_since, delay
        now = clock()
        failing_since = failing_since if failing_since is not None else now
        if (once or target is not None) and now - failing_since >= retry_for:
            return False
        witness.log(f"witness: {why}; retrying in {delay:.1f} s")
        stop.wait(delay)
        delay = min(BACKOFF_S[1], delay * 2)
        return True

    while not stop.is_set():
        wake.clear()  # before asking the tips: an event from now on is not missed
        try:
            if once and target is None:
                target = max(witness.tips().values())
            new = witness.round(target)
        except Unavailable as exc:
            if not backoff(str(exc)):
                print(f"ledger: {exc}; gave up after {retry_for:.0f} s", file=sys.stderr)
                return 2
            continue
        if target is not None and witness.height >= target:
            if not witness.pending_posts(witness.last_tips):
                silent = (f"; {', '.join(sorted(witness.down))} did not answer"
                          if witness.down else "")
                print(f"ok: cosigned to height {witness.height}{silent}; state "
                      f"{witness.state_path}", flush=True)
                return 0
            lacking = sorted(n for n, t in witness.last_tips.items()
                             if any(witness.posted.get(n, 0) < h <= t for h in witness.unposted))
            if not backoff(f"{', '.join(lacking)} did not take every cosignature"):
                print(f"ok: cosigned to height {witness.height}, but not posted to "
                      f"{', '.join(lacking)} (did not answer); state {witness.state_path}",
                      flush=True)
                return 0
            continue
        if new:
            failing_since, delay = None, BACKOFF_S[0]
            continue  # more to catch up with: no waiting
        if witness.down:
            # some node failed this round: wait (new events still wake it), doubling
            if once or target is not None:
                if not backoff(f"{', '.join(witness.down)} did not answer"):
                    print(f"ledger: {', '.join(witness.down)} did not answer; gave up after "
                          f"{retry_for:.0f} s at height {witness.height}", file=sys.stderr)
                    return 2
                continue
            wake.wait(delay)
            delay = min(BACKOFF_S[1], delay * 2)
            continue
        if once:
            # the target is the tip the nodes claimed; none serves the next block: bounded
            why = (f"the nodes claim height {target} but serve no block past height "
                   f"{witness.height}")
            if not backoff(why):
                print(f"ledger: {why}; gave up after {retry_for:.0f} s", file=sys.stderr)
                return 2
            continue
        failing_since, delay = None, BACKOFF_S[0]
        wake.wait(POLL_S)
    print(f"witness: stopped at height {witness.height}", flush=True)
    return 0


def cmd_witness(args: argparse.Namespace) -> int:
    from node.cli import EXIT_ERROR, EXIT_INVALID, CommandError, _ca, _read_identity

    genesis = Genesis.load(args.genesis)
    key = _read_identity(args)
    if args.until_height is not None and args.until_height < 1:
        raise CommandError("--until-height must be at least 1")
    verify = _ca(args)
    sources = [HttpSource(url, genesis, verify=verify) for url in dict.fromkeys(args.node)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise CommandError("a --node is given twice")
    if not any(key.public in witness_keys(c) for _, c in genesis.history()) and \
            not args.quiet:
        print(f"witness: note: {key.public.hex()} is not a witness in genesis; a "
              "configuration change must list it before nodes take its cosignatures",
              file=sys.stderr)

    def log(line: str) -> None:
        if not args.quiet:
            print(line, flush=True)

    hooks = _hooks()
    # the file itself, not a symlink to it: the lock is named after it, and a save renames
    # over the path it is given
    args.state = args.state.resolve()
    lock = _lock(args.state)  # held until the process ends
    try:
        witness = Witness(genesis, key, args.state, list(sources), workers=args.workers or 1,
                          batch=args.batch, log=log, hooks=hooks)
    except WitnessStateError as exc:
        lock.close()
        raise CommandError(str(exc)) from exc
    stop, wake = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        wake.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    if not args.once:  # following, or waiting for --until-height: events wake it
        for source in sources:
            threading.Thread(target=source.watch, args=(None, wake, stop),
                             daemon=True, name=f"witness-events-{source.name}").start()
    try:
        return run(witness, once=args.once, until=args.until_height, stop=stop, wake=wake,
                   retry_for=args.retry_for)
    except Refusal as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_INVALID
    except (WrongChain, WitnessStateError) as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"ledger: {args.state}: cannot write the witness state ({exc})", file=sys.stderr)
        return EXIT_ERROR
    finally:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for source in sources:
            source.client.close()
        lock.close()


def _lock(state: Path) -> IO[bytes]:
    """An exclusive lock on ``STATE.lock``: two witnesses on one state file would each
    believe they alone cosigned."""
    import fcntl

    from node.cli import CommandError

    state = state.resolve()  # one lock per file, however it is reached (a symlink)
    path = state.with_name(state.name + ".lock")
    try:
        f = open(path, "ab")  # noqa: SIM115 - kept open: the lock lives as long as the file
    except OSError as exc:
        raise CommandError(f"{path}: cannot open the lock file ({exc.strerror})") from exc
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.close()
        raise CommandError(f"{state}: another witness process uses this state file") from exc
    return f


def _hooks() -> Hooks:
    """The test hooks, when a test entry point installed them (else the shipped no-op)."""
    return HOOKS


HOOKS = Hooks()


def add_commands(sub: Any) -> None:
    """``ledger witness`` on the parser."""
    p = sub.add_parser(
        "witness", help="follow the chain, verify every block and cosign it (SPEC 11)",
        description="Follow the chain from one or more nodes (GET /v1/events), verify every "
        "block exactly as `ledger audit` does, save the state durably, then cosign each "
        "height and post the cosignature to every node (POST /v1/log/cosignatures). It "
        "never cosigns two histories: a node serving a block other than the one cosigned "
        "at a height, or two nodes serving different blocks, stops it with 'height N: "
        "<reason>' and exit 1. Exit 2 if it could not run. See docs/witness.md.")
    p.add_argument("--node", required=True, action="append", metavar="URL",
                   help="a node's API; repeat to follow and cross-check several")
    p.add_argument("--genesis", required=True, metavar="G", type=Path,
                   help="the chain's genesis.json")
    p.add_argument("--identity", required=True, metavar="PEM", type=Path,
                   help="the witness's key (LEDGER_KEY_PASSPHRASE decrypts it)")
    p.add_argument("--state", required=True, metavar="FILE", type=Path,
                   help="the witness state: what it verified and cosigned (made if absent)")
    p.add_argument("--once", action="store_true",
                   help="cosign up to the tip the nodes serve now, post, and exit (cron)")
    p.add_argument("--until-height", type=int, metavar="N",
                   help="cosign up to height N (waiting for it), post, and exit")
    p.add_argument("--retry-for", type=float, default=60.0, metavar="SECONDS",
                   help="with --once/--until-height: give up (exit 2) after no node answered "
                   "for this long (default 60); following, it retries forever")
    p.add_argument("--workers", type=int, default=1,
                   help="processes checking signatures when catching up (default 1)")
    p.add_argument("--batch", type=int, default=BATCH, help=argparse.SUPPRESS)
    p.add_argument("--ca", type=Path, help="CA file for an https node (or LEDGER_CA)")
    p.add_argument("--quiet", "-q", action="store_true", help="only the final line and errors")
    p.set_defaults(func=cmd_witness)
