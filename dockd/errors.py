"""The one error hierarchy.

Every error dockd raises on purpose is a ``DockdError``. Each class carries:

* ``exit_code``: what ``main()`` exits with when it reaches the top;
* ``msgid``: a stable event id that machines match on (the text may change);
* ``retryable``: what the caller should *do*: ``True`` means "try again
  later, the same request may succeed"; ``False`` means "stop, a human or a
  different input is needed";
* ``retry_in_call``: for a retryable error, whether trying again within the
  same call (moments later) may help. ``False`` for a condition that lasts
  until someone acts (a full store): the call gives up at once and the caller
  reschedules, backing off, so nothing retries it in a tight loop.

Errors reading *input* (a camera file) skip that file; errors writing to the
*store* stop the wipe. The classes below encode that split, callers never
guess from exception types of third-party libraries.
"""

from __future__ import annotations

import errno

# an OS error with one of these, from a camera's filesystem, may be the camera leaving (or
# failing as a whole), not one bad file: the caller asks whether the camera still answers
GONE_ERRNOS = frozenset({errno.EIO, errno.ENODEV, errno.ENXIO, errno.ENOTCONN, errno.ESHUTDOWN, errno.ESTALE})


class DockdError(Exception):
    exit_code: int = 1
    msgid: str = "dockd.error"
    retryable: bool = False
    retry_in_call: bool = True

    def __init__(self, message: str = "", **context: object) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:  # one line, for operators
        return self.message or self.__class__.__name__


# -- usage and configuration ------------------------------------------------

class UsageError(DockdError):
    exit_code = 2
    msgid = "usage.invalid"


class StateDirBusyError(UsageError):
    """Another dockd writes to this state directory (one process per state directory)."""

    msgid = "state.busy"


class ConfigError(DockdError):
    """A bad configuration. ``key`` names the offending key (dotted path)."""

    exit_code = 2
    msgid = "config.invalid"

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        where = f"{key}: " if key else ""
        super().__init__(f"config error: {where}{problem}", key=key)


# -- age ---------------------------------------------------------------------

class AgeError(DockdError):
    """Malformed, unauthentic or undecryptable age data."""

    msgid = "age.invalid"


class AgeHeaderError(AgeError):
    msgid = "age.header_invalid"


class AgePayloadError(AgeError):
    """The payload failed authentication or is truncated. Tampering or corruption."""

    msgid = "age.payload_invalid"


class AgeNoIdentityError(AgeError):
    msgid = "age.no_identity"


class AgeUnsupportedError(AgeError):
    """A valid age feature dockd declines (armor, scrypt, plugins, hybrid PQ)."""

    msgid = "age.unsupported"


class KeyFormatError(AgeError):
    exit_code = 2
    msgid = "age.key_invalid"


# -- camera input ------------------------------------------------------------

class SourceError(DockdError):
    """Reading a camera failed. Skip the file; never wipe on its account."""

    msgid = "source.read_failed"
    retryable = True


class FileChangedError(SourceError):
    """A camera file changed (size/mtime) while or after it was read."""

    msgid = "source.file_changed"


class DeviceGoneError(SourceError):
    """The camera was pulled out, or its filesystem returns EIO."""

    msgid = "device.gone"


class MountError(DockdError):
    msgid = "device.mount_failed"
    retryable = True


# -- local spool -------------------------------------------------------------

class SpoolError(DockdError):
    msgid = "spool.failed"


class SpoolFullError(SpoolError):
    msgid = "spool.full"
    retryable = True


class SpoolExhaustedError(SpoolError):
    """The spool's disk is short of space and dockd holds nothing there whose upload would
    free it (other data fills the disk): waiting cannot help. The recording is left on the
    camera; someone must free space on that disk or lower ``spool.min_free``."""

    msgid = "spool.exhausted"


class SpoolCorruptError(SpoolError):
    """A spooled ciphertext no longer matches its recorded hash / fails auth."""

    msgid = "spool.corrupt"


# -- store -------------------------------------------------------------------

class StoreError(DockdError):
    msgid = "store.error"


class TransientStoreError(StoreError):
    """Throttling, 5xx, timeouts, resets. The retry policy may try again."""

    msgid = "store.transient"
    retryable = True


class PermanentStoreError(StoreError):
    msgid = "store.permanent"
    retryable = False


class StoreAuthError(PermanentStoreError):
    """Credentials refused. Pauses the whole upload queue; never retried blindly."""

    msgid = "store.auth_failed"


class StoreFullError(StoreError):
    """The store has no room (ENOSPC, a quota, HTTP 507). It lasts until space is freed,
    so it is not retried within a call; the recording is rescheduled with the retry
    policy's backoff, capped, and uploads recover by themselves once there is room."""

    msgid = "store.full"
    retryable = True
    retry_in_call = False


class IntegrityError(PermanentStoreError):
    """The store does not hold exactly the bytes we sent."""

    msgid = "store.integrity_failed"


class ObjectMissingError(PermanentStoreError):
    msgid = "store.object_missing"


# -- state -------------------------------------------------------------------

class LedgerError(DockdError):
    msgid = "ledger.error"


class LedgerDamagedError(LedgerError):
    """The ledger file is not a sound SQLite database (overwritten, truncated). It is
    evidence: dockd never replaces or deletes it. Exit 1: the command and configuration
    were right, the station's record needs a human (as a broken audit chain does)."""

    msgid = "ledger.damaged"


class LedgerFullError(LedgerError):
    """The disk holding the ledger is full: nothing more can be recorded, so nothing
    more may be done (every step is recorded before the action that depends on it)."""

    msgid = "ledger.full"


class AuditChainError(LedgerError):
    msgid = "audit.chain_broken"


class VerifyFailed(DockdError):
    """``dockd verify`` found a discrepancy."""

    msgid = "verify.failed"
