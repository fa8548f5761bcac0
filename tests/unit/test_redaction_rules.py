"""SPEC section 10's record-level rules as far as this slice goes: a sealed body parses and
verifies, a ``ledger.redact`` record is checked by ``check_redaction`` (alone) and
``check_redaction_targets`` (against the chain)."""

from __future__ import annotations

import pytest

from ledger.config import REDACT_TAG, REDACT_TYPE, approval_message
from ledger.crypto import RECORD_TAG, PrivateKey, sha256
from ledger.encoding import packb
from ledger.errors import (
    ApprovalInvalidError,
    ApprovalsInsufficientError,
    ConfigInvalidError,
    DuplicateError,
    UnauthorisedError,
    ValidationError,
    WrongChainError,
)
from ledger.records import Record, RecordBody
from ledger.validation import (
    Redaction,
    check_records,
    check_redaction_targets,
    check_unique_within,
)
from tests.factory import make_governed_fixture

FX = make_governed_fixture()
C0 = FX.genesis.config
A0, A1, A2 = FX.admins


def sealed(key: PrivateKey, nonce: int, digest: bytes = b"\x22" * 32) -> Record:
    body = RecordBody(C0.chain_id, "batch.recipe", "oven", None, 0, nonce, key.public,
                      payload_digest=digest)
    raw = body.to_wire()
    return Record.from_wire(packb([raw, key.sign(RECORD_TAG + raw)]))


def redaction(ids: list[bytes], approvers: list[PrivateKey], *, signer: PrivateKey = A0,
              anchor: bytes | None = None, reason: str = "erasure") -> Record:
    change = packb([C0.genesis_hash if anchor is None else anchor, ids, reason])
    msg = approval_message(C0.genesis_hash, change, REDACT_TAG)
    return Record.create(signer, chain=C0.chain_id, type=REDACT_TYPE, subject="redact",
                         payload={"change": change,
                                  "approvals": [[k.public, k.sign(msg)] for k in approvers]},
                         ts=0, nonce=99)


def test_a_sealed_body_decodes_verifies_and_is_authorised_like_any_record() -> None:
    rec = sealed(FX.writer, 1)
    assert rec.body.sealed and rec.body.payload is None
    assert rec.has_valid_signature() and rec.body.to_wire() == rec.body_bytes
    assert check_records(C0, [rec]).config is None
    with pytest.raises(DuplicateError, match="payload_digest"):
        check_unique_within([rec, sealed(FX.writer, 2)])


def test_a_redaction_is_checked_alone_then_against_the_chain() -> None:
    target = sealed(FX.writer, 1)
    effects = check_records(C0, [redaction([target.id], [A1, A2])])
    (r,) = effects.redactions
    assert r.ids == (target.id,) and r.orgs == {"org1", "org2"}
    signer_of = {target.id: FX.writer.public}.get
    check_redaction_targets(C0, r, signer_of, lambda _: False)
    with pytest.raises(ValidationError, match="already redacted"):
        check_redaction_targets(C0, r, signer_of, lambda _: True)
    with pytest.raises(ValidationError, match="not a sealed record"):
        check_redaction_targets(C0, r, {}.get, lambda _: False)


def test_below_the_threshold_only_an_admin_of_the_signers_own_organisation_may_redact() -> None:
    # The writer belongs to "acme": approvals from acme (as by an acme admin) suffice.
    own = Redaction(0, (b"\x01" * 32,), frozenset({"acme"}))
    other = Redaction(0, (b"\x01" * 32,), frozenset({"org1"}))
    signer_of = {b"\x01" * 32: FX.writer.public}.get
    check_redaction_targets(C0, own, signer_of, lambda _: False)
    with pytest.raises(ApprovalsInsufficientError):
        check_redaction_targets(C0, other, signer_of, lambda _: False)


@pytest.mark.parametrize("case", ["empty", "repeated", "other-genesis", "non-admin",
                                  "outsider-signer"])
def test_bad_redactions_are_refused(case: str) -> None:
    rid = sha256(b"r")
    error: type[ValidationError] = ConfigInvalidError
    if case == "empty":
        rec = redaction([], [A1, A2])
    elif case == "repeated":
        rec = redaction([rid, rid], [A1, A2])
    elif case == "other-genesis":
        rec, error = redaction([rid], [A1, A2], anchor=sha256(b"x")), WrongChainError
    elif case == "non-admin":
        rec, error = redaction([rid], [A1, FX.writer]), ApprovalInvalidError
    else:
        rec, error = redaction([rid], [A1, A2], signer=FX.outsider), UnauthorisedError
    with pytest.raises(error):
        check_records(C0, [rec])
