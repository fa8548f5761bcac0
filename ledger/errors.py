"""One exception tree for the library.

Every error carries a stable, machine-readable ``code`` (the HTTP layer maps it to a
problem+json ``type``) and a one-line human message::

    LedgerError                      code
    ├── DecodeError                  malformed        bytes/JSON not of the expected shape
    │   ├── TooLargeError            too_large        a size limit was exceeded
    │   └── InvalidBodyError         invalid_body     a body with both payload and
    │                                                 payload_digest, or a pair with an
    │                                                 inline record (SPEC section 10)
    ├── KeyFileError                 bad_key_file     a PEM key file cannot be read
    ├── GenesisError                 bad_genesis      genesis.json is malformed
    ├── MerkleError                  bad_proof        a proof is malformed (length, index)
    │   └── RootMismatchError        root_mismatch    a proof leads to another root
    ├── ValidationError              invalid          a well-formed object breaks a rule
    │   ├── SignatureError           bad_signature    an Ed25519 signature does not verify
    │   ├── WrongChainError          wrong_chain      the object names another chain
    │   ├── UnauthorisedError        unauthorized     signer may not submit this type
    │   ├── DuplicateError           duplicate        id or (signer, nonce) seen before
    │   │   └── DigestReusedError    digest_reused    a sealed payload_digest seen before
    │   ├── CertificateError         bad_certificate  a commit certificate is invalid
    │   ├── BlockError               bad_block        a block breaks a chain rule
    │   ├── ReservedTypeError        reserved_type    a ledger.* type used outside SPEC 9/10
    │   ├── ConfigVersionError       config_version   a change's version/prev is not next
    │   ├── ConfigInvalidError       config_invalid   a change/configuration breaks a rule
    │   ├── ConfigDuplicateError     config_duplicate two configuration changes in one block
    │   ├── ApprovalInvalidError     approval_invalid an approval is repeated, not by an
    │   │                                             admin, or does not verify
    │   ├── ApprovalsInsufficientError approvals_insufficient  below the threshold
    │   ├── RedactionTargetError     redaction_target a redaction names a record that is not
    │   │                                             sealed, not committed earlier, or
    │   │                                             already redacted
    │   ├── JoinInvalidError         join_invalid     joins are not one valid per new key
    │   ├── PayloadMismatchError     payload_mismatch a sealed payload does not match its
    │   │                                             record's payload_digest
    │   ├── PayloadMissingError      payload_missing  a sealed record came without its pair
    │   └── ReadSignatureError       bad_read_signature  a read request's RFC 9421
    │                                                 signature is missing, malformed,
    │                                                 expired or does not verify (SPEC 10)
    ├── AuditError                   audit_failed     a chain fails its audit at a height
    ├── ReceiptError                 bad_receipt      a receipt does not prove its record
    ├── LogProofError                bad_log_proof    a checkpoint or log proof does not hold
    ├── WitnessError                 bad_cosignature  a witness cosignature does not hold
    │                                (unknown_witness, witnesses_insufficient: see its doc)
    └── StoreError                   store            the block store failed
        └── CorruptStoreError        corrupt_store    the store's contents are inconsistent

Decode and shape errors ("the peer broke the protocol") are kept apart from validation
errors ("a well-formed object breaks a rule"), as h11 does.
"""

from __future__ import annotations

from typing import Any


class LedgerError(Exception):
    """Base of every error this library raises on purpose."""

    code = "error"


class DecodeError(LedgerError):
    """Bytes or JSON that do not decode exactly to the expected shape."""

    code = "malformed"


class TooLargeError(DecodeError):
    """An input exceeds a size limit (payload, batch, body)."""

    code = "too_large"


class KeyFileError(LedgerError):
    """A private-key file cannot be read, parsed or decrypted."""

    code = "bad_key_file"


class GenesisError(LedgerError):
    """genesis.json is missing, malformed, or inconsistent."""

    code = "bad_genesis"


class MerkleError(LedgerError):
    """A Merkle proof is malformed: wrong length, index out of range, bad sizes."""

    code = "bad_proof"


class RootMismatchError(MerkleError):
    """A well-formed proof leads to a root other than the expected one."""

    code = "root_mismatch"

    def __init__(self, expected: bytes, computed: bytes, what: str = "root") -> None:
        super().__init__(f"{what} mismatch: expected {expected.hex()}, computed {computed.hex()}")
        self.expected = expected
        self.computed = computed
        self._args = (expected, computed, what)

    def __reduce__(self) -> tuple[type, tuple[bytes, bytes, str]]:
        return (type(self), self._args)


class ValidationError(LedgerError):
    """A well-formed object breaks a rule of the protocol."""

    code = "invalid"


class SignatureError(ValidationError):
    """An Ed25519 signature does not verify under libsodium's rule (SPEC section 1)."""

    code = "bad_signature"


class WrongChainError(ValidationError):
    """An object names a chain other than this one."""

    code = "wrong_chain"


class UnauthorisedError(ValidationError):
    """The signer is not authorised by genesis for the record type."""

    code = "unauthorized"


class DuplicateError(ValidationError):
    """A record id or (signer, nonce) pair appears earlier in the chain or block."""

    code = "duplicate"


class DigestReusedError(DuplicateError):
    """A sealed record's ``payload_digest`` is already on the chain (or twice in one block):
    SPEC section 10 allows each digest once, so a redacted payload cannot come back."""

    code = "digest_reused"


class CertificateError(ValidationError):
    """A commit certificate does not certify its block."""

    code = "bad_certificate"


class BlockError(ValidationError):
    """A block breaks a chain rule (height, link, roots, log root, time, proposer)."""

    code = "bad_block"


class ReservedTypeError(ValidationError):
    """A reserved ``ledger.`` type named by a policy, sealed, or used other than by SPEC
    sections 9 and 10."""

    code = "reserved_type"


class ConfigVersionError(ValidationError):
    """A configuration change's ``version`` or ``prev`` does not follow the one in force."""

    code = "config_version"


class ConfigInvalidError(ValidationError):
    """A configuration (a change's, or genesis's) breaks a rule of SPEC sections 5 and 9,
    or a change payload does not decode exactly."""

    code = "config_invalid"


class ConfigDuplicateError(ValidationError):
    """A block holds more than one ``ledger.config`` record."""

    code = "config_duplicate"


class ApprovalInvalidError(ValidationError):
    """An approval is repeated, by a key without the governance role, or does not verify."""

    code = "approval_invalid"


class ApprovalsInsufficientError(ValidationError):
    """Valid approvals come from fewer governing organisations than the threshold."""

    code = "approvals_insufficient"


class RedactionTargetError(ValidationError):
    """A redaction names a record that is not a sealed record committed at a lower height,
    or one already redacted (SPEC section 10)."""

    code = "redaction_target"


class JoinInvalidError(ValidationError):
    """The joins are not exactly one valid signature per validator key a change adds."""

    code = "join_invalid"


class PayloadMismatchError(ValidationError):
    """A ``(salt, payload_bytes)`` pair does not match a sealed record's ``payload_digest``,
    or is not a payload (SPEC section 10)."""

    code = "payload_mismatch"


class PayloadMissingError(ValidationError):
    """A sealed record submitted without its ``(salt, payload)`` pair (SPEC section 10)."""

    code = "payload_missing"


class InvalidBodyError(DecodeError):
    """A submission item whose parts do not fit together: a pair with an inline record, or
    a body holding both ``payload`` and ``payload_digest`` (SPEC section 10)."""

    code = "invalid_body"


class ReadSignatureError(ValidationError):
    """A read request's HTTP Message Signature (RFC 9421, SPEC section 10) is missing,
    malformed, covers other components, is outside the time window, or does not verify."""

    code = "bad_read_signature"


class AuditError(LedgerError):
    """A chain fails its audit; ``height`` is the first bad block."""

    code = "audit_failed"

    def __init__(self, height: int, reason: str) -> None:
        super().__init__(f"height {height}: {reason}")
        self.height = height
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[int, str]]:
        return (type(self), (self.height, self.reason))


class CodedError(LedgerError):
    """A LedgerError whose ``code`` may be given per instance (it survives pickling)."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (_coded_error, (type(self), str(self), self.code))


def _coded_error(cls: type[CodedError], message: str, code: str) -> CodedError:
    return cls(message, code=code)


class ReceiptError(CodedError):
    """A receipt does not prove that its record is on the chain. ``code`` is ``bad_receipt``,
    or what a verifier demanded beyond it failed: a witness code (``WitnessError``'s),
    ``checkpoint_mismatch`` (another block than a trusted checkpoint's) or
    ``checkpoint_unprovable`` (a trusted checkpoint the receipt cannot be held against)."""

    code = "bad_receipt"


class LogProofError(CodedError):
    """A checkpoint, or a log inclusion or consistency proof, does not verify (SPEC section
    11): a node served a wrong proof, a checkpoint its validators did not sign, or a log
    that does not extend an earlier one. ``code`` is ``bad_log_proof``, or a witness code
    (``WitnessError``'s) when a checkpoint's cosignatures fail."""

    code = "bad_log_proof"


class WitnessError(CodedError):
    """A witness cosignature does not hold (SPEC section 11). ``code`` is ``bad_cosignature``
    (malformed, or the signature does not verify), ``unknown_witness`` (the key is not a
    witness of that height) or ``witnesses_insufficient`` (fewer than a verifier demands)."""

    code = "bad_cosignature"


class StoreError(LedgerError):
    """The block store cannot do what was asked."""

    code = "store"


class CorruptStoreError(StoreError):
    """The store's contents contradict themselves; ``height`` names where, if known."""

    code = "corrupt_store"

    def __init__(self, message: str, height: int | None = None) -> None:
        super().__init__(message if height is None else f"height {height}: {message}")
        self.height = height
        self._message = message

    def __reduce__(self) -> tuple[type, tuple[str, int | None]]:
        return (type(self), (self._message, self.height))
