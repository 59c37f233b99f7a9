"""The UDS (ISO 14229-1) vocabulary shared by the appliance's server and ``push-model``.

Sessions: default (0x01) and programming (0x02). The download needs the programming session and
SecurityAccess level 0x01 (seed 0x01 / key 0x02).

Security: the seed is 16 random bytes; the key is ``HMAC-SHA256(secret, seed)`` (32 bytes), with the
provisioned secret of ``updates.security_secret_file`` (its first line, UTF-8). The seed/key
exchange only gates *who may download*; the package itself is authenticated by its Ed25519
signature when the verify routine runs.

Data identifiers (ReadDataByIdentifier 0x22; 0xFD00–0xFEFF is ISO 14229-1's systemSupplierSpecific
range). Text identifiers are UTF-8 of variable length (read them one per request):

======  ===================  ==========  ==================================================
DID     name                 format      content
======  ===================  ==========  ==================================================
F195    software version     ASCII       the appliance firmware version (ISO 14229-1 name:
                                         systemSupplierECUSoftwareVersionNumber)
FD00    active version       text        the model version(s) serving now
FD01    staged version       text        the verified package waiting for activation
FD02    swap state           text        idle, a step (staging, preparing, …), done, failed,
                                         rolled_back
FD03    bytes received       uint32 BE   bytes of the package kept in staging (resume offset)
FD04    package size         uint32 BE   the size announced for that package (0: none)
FD05    package sha256       32 bytes    its announced sha256 (zeros: none). **Writable**
                                         (WriteDataByIdentifier 0x2E, programming session,
                                         unlocked): the tester announces the package it is
                                         about to download
FD06    last error           text        why the last transfer, verify, activation or
                                         rollback failed ("reason: message"); empty if none
FD07    transfer state       text        empty, partial or complete
======  ===================  ==========  ==================================================

Routines (RoutineControl 0x31, startRoutine 0x01 only):

======  ========  ====================================================================
RID     name      action
======  ========  ====================================================================
FF01    verify    verify the complete package (signature, digests, compatibility) and
                  stage it; positive response's status record: the staged version
                  (UTF-8). ISO 14229-1 names FF01 checkProgrammingDependencies.
F001    activate  start the swap to the staged package; poll FD02 until a terminal word
F002    rollback  return to the previous committed model
======  ========  ====================================================================

Activate and rollback use the systemSupplierSpecific range 0xF000–0xFEFF, because ISO 14229-1
reserves 0xFF02–0xFFFF.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from engines.errors import FileReadError

from .errors import UpdateError

# -- services ---------------------------------------------------------------------------------------
SID_DIAGNOSTIC_SESSION_CONTROL = 0x10
SID_READ_DATA_BY_IDENTIFIER = 0x22
SID_SECURITY_ACCESS = 0x27
SID_WRITE_DATA_BY_IDENTIFIER = 0x2E
SID_ROUTINE_CONTROL = 0x31
SID_REQUEST_DOWNLOAD = 0x34
SID_TRANSFER_DATA = 0x36
SID_REQUEST_TRANSFER_EXIT = 0x37
SID_TESTER_PRESENT = 0x3E
NEGATIVE_RESPONSE = 0x7F
#: Added to a request's service id in its positive response.
POSITIVE_OFFSET = 0x40
#: Bit 7 of a sub-function byte: suppressPosRspMsgIndicationBit.
SUPPRESS_POSITIVE_RESPONSE = 0x80

# -- negative response codes ------------------------------------------------------------------------
NRC_GENERAL_REJECT = 0x10
NRC_SERVICE_NOT_SUPPORTED = 0x11
NRC_SUB_FUNCTION_NOT_SUPPORTED = 0x12
NRC_INCORRECT_MESSAGE_LENGTH = 0x13
NRC_CONDITIONS_NOT_CORRECT = 0x22
NRC_REQUEST_SEQUENCE_ERROR = 0x24
NRC_REQUEST_OUT_OF_RANGE = 0x31
NRC_SECURITY_ACCESS_DENIED = 0x33
NRC_INVALID_KEY = 0x35
NRC_EXCEEDED_NUMBER_OF_ATTEMPTS = 0x36
NRC_REQUIRED_TIME_DELAY_NOT_EXPIRED = 0x37
NRC_UPLOAD_DOWNLOAD_NOT_ACCEPTED = 0x70
NRC_TRANSFER_DATA_SUSPENDED = 0x71
NRC_GENERAL_PROGRAMMING_FAILURE = 0x72
NRC_WRONG_BLOCK_SEQUENCE_COUNTER = 0x73
NRC_RESPONSE_PENDING = 0x78
NRC_SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION = 0x7F

# -- sessions and security --------------------------------------------------------------------------
SESSION_DEFAULT = 0x01
SESSION_PROGRAMMING = 0x02
SECURITY_LEVEL = 0x01  # requestSeed; sendKey is SECURITY_LEVEL + 1
SEED_BYTES = 16
KEY_BYTES = 32
#: Shortest accepted SecurityAccess secret (characters of the secret file's first line).
MIN_SECRET_CHARS = 16

#: P2server_max and P2*server_max reported in the DiagnosticSessionControl response. ISO's 50 ms
#: is not something a Python server on a busy Jetson (inference on every core) can promise; 1 s is.
#: Slow work (hashing, verifying a package) answers 0x78 responsePending, then finishes within P2*.
P2_SERVER_MAX_MS = 1000
P2_STAR_SERVER_MAX_MS = 5000

# -- data identifiers -------------------------------------------------------------------------------
DID_SOFTWARE_VERSION = 0xF195
DID_ACTIVE_VERSION = 0xFD00
DID_STAGED_VERSION = 0xFD01
DID_SWAP_STATE = 0xFD02
DID_BYTES_RECEIVED = 0xFD03
DID_PACKAGE_SIZE = 0xFD04
DID_PACKAGE_SHA256 = 0xFD05
DID_LAST_ERROR = 0xFD06
DID_TRANSFER_STATE = 0xFD07
#: Longest text returned for a text identifier, in bytes (cut on a character boundary).
MAX_TEXT_BYTES = 255

# -- routines ---------------------------------------------------------------------------------------
ROUTINE_START = 0x01
ROUTINE_VERIFY = 0xFF01
ROUTINE_ACTIVATE = 0xF001
ROUTINE_ROLLBACK = 0xF002

#: The only dataFormatIdentifier accepted by RequestDownload: no compression, no encryption.
DATA_FORMAT_PLAIN = 0x00


def compute_key(secret: bytes, seed: bytes) -> bytes:
    """The SecurityAccess key for ``seed``: HMAC-SHA256 with the provisioned secret (32 bytes)."""
    return hmac.new(secret, seed, hashlib.sha256).digest()


def read_security_secret(path: Path) -> bytes:
    """The SecurityAccess secret: the first line of ``path``, as UTF-8 bytes.

    Raises:
        UpdateError: the file cannot be read, is empty, or its secret is shorter than
            :data:`MIN_SECRET_CHARS` characters. The message names the file, never the secret.
    """
    from ..config_load import read_secret_file

    try:
        text = read_secret_file(path)
    except FileReadError as err:
        raise UpdateError(
            f"the SecurityAccess secret file {err}; check updates.security_secret_file (or --secret-file)"
        ) from None
    if len(text.strip()) < MIN_SECRET_CHARS:
        raise UpdateError(
            f"the SecurityAccess secret in {path} is shorter than {MIN_SECRET_CHARS} characters; "
            "write a long random one, e.g. `openssl rand -hex 32`"
        )
    return text.strip().encode("utf-8")


def negative_response(service_id: int, code: int) -> bytes:
    """``7F <service id> <code>``."""
    return bytes((NEGATIVE_RESPONSE, service_id, code))


def nrc_name(code: int) -> str:
    """A readable name for a negative response code, e.g. ``"requestSequenceError (0x24)"``."""
    return f"{_NRC_NAMES.get(code, 'unknown')} (0x{code:02X})"


_NRC_NAMES = {
    NRC_GENERAL_REJECT: "generalReject",
    NRC_SERVICE_NOT_SUPPORTED: "serviceNotSupported",
    NRC_SUB_FUNCTION_NOT_SUPPORTED: "subFunctionNotSupported",
    NRC_INCORRECT_MESSAGE_LENGTH: "incorrectMessageLengthOrInvalidFormat",
    NRC_CONDITIONS_NOT_CORRECT: "conditionsNotCorrect",
    NRC_REQUEST_SEQUENCE_ERROR: "requestSequenceError",
    NRC_REQUEST_OUT_OF_RANGE: "requestOutOfRange",
    NRC_SECURITY_ACCESS_DENIED: "securityAccessDenied",
    NRC_INVALID_KEY: "invalidKey",
    NRC_EXCEEDED_NUMBER_OF_ATTEMPTS: "exceededNumberOfAttempts",
    NRC_REQUIRED_TIME_DELAY_NOT_EXPIRED: "requiredTimeDelayNotExpired",
    NRC_UPLOAD_DOWNLOAD_NOT_ACCEPTED: "uploadDownloadNotAccepted",
    NRC_TRANSFER_DATA_SUSPENDED: "transferDataSuspended",
    NRC_GENERAL_PROGRAMMING_FAILURE: "generalProgrammingFailure",
    NRC_WRONG_BLOCK_SEQUENCE_COUNTER: "wrongBlockSequenceCounter",
    NRC_RESPONSE_PENDING: "requestCorrectlyReceived-ResponsePending",
    NRC_SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION: "serviceNotSupportedInActiveSession",
}
