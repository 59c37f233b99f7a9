"""The appliance's UDS (ISO 14229-1) server over ISO-TP: it receives model packages from ``push-model``.

Two layers, as the CAN anchors advise: :class:`UdsService` is the protocol as a pure state machine
(one request in, at most one response out, the time passed in; no threads, no bus), and
:class:`UdsServer` binds it to a python-can bus through can-isotp's ``NotifierBasedCanStack`` on a
thread of its own. Identifiers, routines and the seed/key algorithm are in
:mod:`appliance.updates.uds_protocol`.

The download sequence
---------------------
1. DiagnosticSessionControl 0x10 0x02 (programming session). Any session change — and the S3
   timer (``updates.can.session_timeout_s`` without a request) — locks security again, forgets a
   pending seed and pauses an open download (its bytes stay in staging for a resume).
2. SecurityAccess 0x27 0x01 → 16-byte seed; 0x27 0x02 + HMAC-SHA256(secret, seed). Asking for a
   seed twice returns the same pending seed; when already unlocked the seed is all zeros. A wrong
   key answers 0x35 and drops the seed; the ``security_max_attempts``-th wrong key in a row answers
   0x36 and starts ``security_delay_s`` during which SecurityAccess answers 0x37. The count and the
   delay survive session changes (they are not a way around the delay).
3. WriteDataByIdentifier 0xFD05 ← the package's sha256 (32 bytes): which package comes next.
4. RequestDownload 0x34: dataFormatIdentifier 0x00; addressAndLengthFormatIdentifier with 1–4
   byte address and size; **memoryAddress is the byte offset** to start at: 0 starts over; a
   resume must name exactly the bytes received of the same package (same sha256 and size, still
   partial, read from 0xFD03/0xFD04/0xFD05). The response carries maxNumberOfBlockLength
   (``updates.can.transfer_block_bytes``, 2 bytes).
5. TransferData 0x36 blocks; the block sequence counter starts at 0x01 and wraps 0xFF → 0x00. The
   previous block repeated (same counter and data: its response was lost) is answered positively
   and not written again (ISO 14229-1); any other counter is 0x73.
6. RequestTransferExit 0x37 once every byte is in: the file's sha256 is checked against the
   announced one (0x72 and start over when it differs), then it is kept as ``received.pkg``.
7. RoutineControl 0x31 0x01: 0xFF01 verify (calls ``handler.verify``), 0xF001 activate, 0xF002
   rollback. 0xFF01 needs a complete package (it may also follow a reconnect).

Negative responses (a refused request changes nothing)
------------------------------------------------------
Checked in ISO 14229-1's order — service, session, security, length, sub-function, sequence, range:

* 0x11 serviceNotSupported: any other service.
* 0x7F serviceNotSupportedInActiveSession: 0x27, 0x2E, 0x31, 0x34, 0x36, 0x37 in the default
  session (0x10, 0x22 and 0x3E work in both).
* 0x12 subFunctionNotSupported: sessions other than 0x01/0x02, security levels other than
  0x01/0x02, RoutineControl other than startRoutine, TesterPresent other than 0x00.
* 0x13 incorrectMessageLengthOrInvalidFormat: a request of the wrong length (a key that is not
  32 bytes, an empty TransferData, more than 8 identifiers in one read, …).
* 0x33 securityAccessDenied: 0x2E, 0x31, 0x34, 0x36, 0x37 while locked.
* 0x24 requestSequenceError: sendKey without a pending seed; TransferData or RequestTransferExit
  without an open download; RequestTransferExit with bytes missing; verify without a complete
  package.
* 0x22 conditionsNotCorrect: RequestDownload before the sha256 was announced (ISO 14229-1 does not
  list 0x24 for RequestDownload), or while a download is open; an announcement while a download is
  open; the handler refusing activate or rollback (nothing staged, a swap under way), or verify for
  a reason other than the package itself.
* 0x31 requestOutOfRange: an unknown data identifier or routine; a dataFormatIdentifier other than
  0x00 or an invalid addressAndLengthFormatIdentifier; a memorySize of 0 or above
  ``updates.max_package_mb`` (the request is invalid); a resume offset that is not the bytes
  received of this package.
* 0x70 uploadDownloadNotAccepted: the staging folder lacks room for the package plus a reserve, or
  cannot be written (a fault condition: the same request may succeed later).
* 0x71 transferDataSuspended: a block that would go beyond the announced memorySize.
* 0x72 generalProgrammingFailure: writing the block failed; the received bytes do not match the
  announced sha256; the handler refused the package in verify (``PackageError``).
* 0x73 wrongBlockSequenceCounter: see step 5.
* 0x35, 0x36, 0x37: see step 2.
* 0x78 responsePending: sent while slow work runs (hashing at exit, verify): after 0.1 s, then
  every 2 s (each one restarts the tester's P2* of 5 s) until the final response.

Why a refusal happened (the handler's ``reason`` and message, or the transfer's) is readable from
data identifier 0xFD06. A handler that keeps the update record (:class:`~appliance.updates.handler.UpdateRecorder`,
the swap manager) is handed the transfer's refusals, and FD06 is rendered from that one record, like
``…/model``; with another handler, until the next download or routine starts.

Threads: ``uds-server`` runs the protocol; can-isotp runs two daemon threads and python-can's
``Notifier`` one; ``uds-slow`` runs one slow call at a time while ``uds-server`` sends 0x78.
:meth:`UdsServer.stop` is bounded; :meth:`UdsServer.close` is idempotent.

A node flooding the bus: at most 4 096 CAN frames and 32 complete requests wait (the oldest
requests are dropped, both counted in :meth:`UdsServer.drops` and ``…/model``'s ``transfer``), so
the server never falls behind the bus; can-isotp's per-frame warnings go to a logger that passes
ERROR only, and the server's own ISO-TP and drop warnings come once per kind and 10 s.
"""

from __future__ import annotations

import hmac
import logging
import os
import struct
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

import can

from .. import __version__
from ..config import ApplianceConfig
from ..logs import RateLimitedLog
from .can_link import ISOTP_SERVER_LOGGER, BoundedNotifierStack, isotp_address, isotp_params, open_bus
from .errors import PackageError, UpdateError
from .handler import UpdateHandler, UpdateRecorder, UpdateStatus
from .transfer import (
    DEFAULT_RESERVE_BYTES,
    DEFAULT_SYNC_EVERY,
    IncomingPackage,
    NoSpaceError,
    StagingIOError,
    TransferIntegrityError,
    TransferProgress,
    TransferRangeError,
    TransferState,
)
from .uds_protocol import (
    DATA_FORMAT_PLAIN,
    DID_ACTIVE_VERSION,
    DID_BYTES_RECEIVED,
    DID_LAST_ERROR,
    DID_PACKAGE_SHA256,
    DID_PACKAGE_SIZE,
    DID_SOFTWARE_VERSION,
    DID_STAGED_VERSION,
    DID_SWAP_STATE,
    DID_TRANSFER_STATE,
    KEY_BYTES,
    MAX_TEXT_BYTES,
    NRC_CONDITIONS_NOT_CORRECT,
    NRC_EXCEEDED_NUMBER_OF_ATTEMPTS,
    NRC_GENERAL_PROGRAMMING_FAILURE,
    NRC_GENERAL_REJECT,
    NRC_INCORRECT_MESSAGE_LENGTH,
    NRC_INVALID_KEY,
    NRC_REQUEST_OUT_OF_RANGE,
    NRC_REQUEST_SEQUENCE_ERROR,
    NRC_REQUIRED_TIME_DELAY_NOT_EXPIRED,
    NRC_RESPONSE_PENDING,
    NRC_SECURITY_ACCESS_DENIED,
    NRC_SERVICE_NOT_SUPPORTED,
    NRC_SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION,
    NRC_SUB_FUNCTION_NOT_SUPPORTED,
    NRC_TRANSFER_DATA_SUSPENDED,
    NRC_UPLOAD_DOWNLOAD_NOT_ACCEPTED,
    NRC_WRONG_BLOCK_SEQUENCE_COUNTER,
    P2_SERVER_MAX_MS,
    P2_STAR_SERVER_MAX_MS,
    POSITIVE_OFFSET,
    ROUTINE_ACTIVATE,
    ROUTINE_ROLLBACK,
    ROUTINE_START,
    ROUTINE_VERIFY,
    SECURITY_LEVEL,
    SEED_BYTES,
    SESSION_DEFAULT,
    SESSION_PROGRAMMING,
    SID_DIAGNOSTIC_SESSION_CONTROL,
    SID_READ_DATA_BY_IDENTIFIER,
    SID_REQUEST_DOWNLOAD,
    SID_REQUEST_TRANSFER_EXIT,
    SID_ROUTINE_CONTROL,
    SID_SECURITY_ACCESS,
    SID_TESTER_PRESENT,
    SID_TRANSFER_DATA,
    SID_WRITE_DATA_BY_IDENTIFIER,
    SUPPRESS_POSITIVE_RESPONSE,
    compute_key,
    negative_response,
    nrc_name,
    read_security_secret,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Identifiers read in one ReadDataByIdentifier request at most.
MAX_DIDS_PER_READ = 8
#: Slow work: the first 0x78 goes out after this long, then one every PENDING_INTERVAL_S (< P2*).
FIRST_PENDING_S = 0.1
PENDING_INTERVAL_S = 2.0
#: How long the server thread waits for a request before it looks at its timers and stop event.
POLL_S = 0.1
#: The same ISO-TP error within this many seconds is logged at DEBUG, not WARNING.
_ERROR_REPEAT_S = 10.0

#: Services the default session offers; the others answer 0x7F there.
_DEFAULT_SESSION_SERVICES = frozenset(
    {SID_DIAGNOSTIC_SESSION_CONTROL, SID_READ_DATA_BY_IDENTIFIER, SID_TESTER_PRESENT}
)


class _RefusedError(Exception):
    """A negative response code to answer (internal to :class:`UdsService`)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _text(value: str) -> bytes:
    """UTF-8, cut to MAX_TEXT_BYTES on a character boundary."""
    data = value.encode("utf-8")
    if len(data) <= MAX_TEXT_BYTES:
        return data
    return data[:MAX_TEXT_BYTES].decode("utf-8", errors="ignore").encode("utf-8")


class UdsService:
    """The UDS server's protocol state: sessions, security, download, routines, status identifiers.

    Drive it with :meth:`handle` for each request and :meth:`poll` now and then (timers). Not
    thread-safe: one thread calls it.

    Args:
        config: the appliance configuration (``[updates]`` and ``[updates.can]`` are used).
        handler: verify/activate/rollback/status (see :mod:`appliance.updates.handler`).
        incoming: the staging file.
        secret: the SecurityAccess secret (bytes of ``updates.security_secret_file``'s first line).
        pending: sends ``7F <sid> 78`` at once (responsePending) while slow work runs; ``None`` runs
            slow work inline without it (tests of the pure logic).
        random_bytes: the seed source (``os.urandom``).
        clock: monotonic seconds (``time.monotonic``), for the S3 timer and the security delay.
    """

    def __init__(
        self,
        config: ApplianceConfig,
        handler: UpdateHandler,
        incoming: IncomingPackage,
        secret: bytes,
        pending: Optional[Callable[[int], None]] = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handler = handler
        self.incoming = incoming
        self.pending = pending
        self._secret = secret
        self._random = random_bytes
        self._clock = clock
        can_config = config.updates.can
        self.session_timeout_s = can_config.session_timeout_s
        self.max_attempts = can_config.security_max_attempts
        self.delay_s = can_config.security_delay_s
        self.block_length = can_config.transfer_block_bytes
        self.max_package_bytes = config.updates.max_package_bytes
        self.session = SESSION_DEFAULT
        self.unlocked = False
        self._seed: Optional[bytes] = None
        self._failed_attempts = 0
        self._delay_until: Optional[float] = None
        self._last_request = clock()
        self._announced: Optional[bytes] = None
        self._expected_counter = 1
        self._previous_block: Optional[Tuple[int, bytes]] = None
        self.last_error = ""
        self._services: Dict[int, Callable[[bytes, float], Optional[bytes]]] = {
            SID_DIAGNOSTIC_SESSION_CONTROL: self._session_control,
            SID_READ_DATA_BY_IDENTIFIER: self._read_data,
            SID_SECURITY_ACCESS: self._security_access,
            SID_WRITE_DATA_BY_IDENTIFIER: self._write_data,
            SID_ROUTINE_CONTROL: self._routine_control,
            SID_REQUEST_DOWNLOAD: self._request_download,
            SID_TRANSFER_DATA: self._transfer_data,
            SID_REQUEST_TRANSFER_EXIT: self._transfer_exit,
            SID_TESTER_PRESENT: self._tester_present,
        }

    # -- entry points ---------------------------------------------------------------------------------

    def handle(self, request: bytes) -> Optional[bytes]:
        """Answer one request; ``None`` when no response is due (suppressed positive response).

        Never raises for a request's content: anything unexpected is logged and answered 0x10.
        """
        if not request:
            return None
        self.poll()
        now = self._clock()
        service_id = request[0]
        service = self._services.get(service_id)
        try:
            if service is None:
                raise _RefusedError(NRC_SERVICE_NOT_SUPPORTED)
            if self.session == SESSION_DEFAULT and service_id not in _DEFAULT_SESSION_SERVICES:
                raise _RefusedError(NRC_SERVICE_NOT_SUPPORTED_IN_ACTIVE_SESSION)
            response = service(request, now)
        except _RefusedError as refused:
            response = negative_response(service_id, refused.code)
            logger.debug("UDS: service 0x%02X refused: %s", service_id, nrc_name(refused.code))
        except Exception:  # a bug must not kill the CAN thread; the tester gets generalReject
            logger.exception("UDS: service 0x%02X failed", service_id)
            response = negative_response(service_id, NRC_GENERAL_REJECT)
        # S3 restarts when a request has been handled (slow work included).
        self._last_request = self._clock()
        return response

    def poll(self) -> None:
        """Expire the S3 session timer and the security delay."""
        now = self._clock()
        if self.session != SESSION_DEFAULT and now - self._last_request > self.session_timeout_s:
            logger.info(
                "UDS: no request for %.1f s; back to the default session, security locked",
                self.session_timeout_s,
            )
            self._change_session(SESSION_DEFAULT)
        if self._delay_until is not None and now >= self._delay_until:
            self._delay_until = None
            logger.info("UDS: security access delay over")

    def close(self) -> None:
        """End the session: pause an open download (the staging file is synced)."""
        self._change_session(SESSION_DEFAULT)

    # -- services -------------------------------------------------------------------------------------

    def _session_control(self, request: bytes, now: float) -> Optional[bytes]:
        sub, suppress = self._sub_function(request)
        if sub not in (SESSION_DEFAULT, SESSION_PROGRAMMING):
            raise _RefusedError(NRC_SUB_FUNCTION_NOT_SUPPORTED)
        if len(request) != 2:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        self._change_session(sub)
        if suppress:
            return None
        return bytes((SID_DIAGNOSTIC_SESSION_CONTROL + POSITIVE_OFFSET, sub)) + struct.pack(
            ">HH", P2_SERVER_MAX_MS, P2_STAR_SERVER_MAX_MS // 10
        )

    def _tester_present(self, request: bytes, now: float) -> Optional[bytes]:
        sub, suppress = self._sub_function(request)
        if sub != 0x00:
            raise _RefusedError(NRC_SUB_FUNCTION_NOT_SUPPORTED)
        if len(request) != 2:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        return None if suppress else bytes((SID_TESTER_PRESENT + POSITIVE_OFFSET, 0x00))

    def _security_access(self, request: bytes, now: float) -> Optional[bytes]:
        sub, suppress = self._sub_function(request)
        if sub not in (SECURITY_LEVEL, SECURITY_LEVEL + 1):
            raise _RefusedError(NRC_SUB_FUNCTION_NOT_SUPPORTED)
        positive = bytes((SID_SECURITY_ACCESS + POSITIVE_OFFSET, sub))
        if sub == SECURITY_LEVEL:
            if len(request) != 2:
                raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
            if self._delay_until is not None:
                raise _RefusedError(NRC_REQUIRED_TIME_DELAY_NOT_EXPIRED)
            if self.unlocked:
                return positive + bytes(SEED_BYTES)
            if self._seed is None:
                self._seed = self._random(SEED_BYTES)
            return positive + self._seed
        if self._delay_until is not None:
            raise _RefusedError(NRC_REQUIRED_TIME_DELAY_NOT_EXPIRED)
        if self._seed is None:
            raise _RefusedError(NRC_REQUEST_SEQUENCE_ERROR)
        key = request[2:]
        if len(key) != KEY_BYTES:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        expected = compute_key(self._secret, self._seed)
        self._seed = None
        if hmac.compare_digest(key, expected):
            self.unlocked = True
            self._failed_attempts = 0
            logger.info("UDS: security access granted")
            return None if suppress else positive
        self._failed_attempts += 1
        if self._failed_attempts >= self.max_attempts:
            self._failed_attempts = 0
            self._delay_until = now + self.delay_s
            logger.warning(
                "UDS: %d wrong security keys in a row; security access refused for %.1f s",
                self.max_attempts,
                self.delay_s,
            )
            raise _RefusedError(NRC_EXCEEDED_NUMBER_OF_ATTEMPTS)
        logger.warning(
            "UDS: wrong security key (%d of %d attempts)", self._failed_attempts, self.max_attempts
        )
        raise _RefusedError(NRC_INVALID_KEY)

    def _read_data(self, request: bytes, now: float) -> Optional[bytes]:
        if len(request) < 3 or (len(request) - 1) % 2:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        identifiers = [int.from_bytes(request[i : i + 2], "big") for i in range(1, len(request), 2)]
        if len(identifiers) > MAX_DIDS_PER_READ:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        response = bytearray((SID_READ_DATA_BY_IDENTIFIER + POSITIVE_OFFSET,))
        status: List[UpdateStatus] = []
        for identifier in identifiers:
            value = self._data_value(identifier, status)
            if value is not None:
                response += identifier.to_bytes(2, "big") + value
        if len(response) == 1:
            raise _RefusedError(NRC_REQUEST_OUT_OF_RANGE)
        return bytes(response)

    def _write_data(self, request: bytes, now: float) -> Optional[bytes]:
        if len(request) < 3:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        identifier = int.from_bytes(request[1:3], "big")
        if identifier != DID_PACKAGE_SHA256:
            raise _RefusedError(NRC_REQUEST_OUT_OF_RANGE)
        if not self.unlocked:
            raise _RefusedError(NRC_SECURITY_ACCESS_DENIED)
        if len(request) != 3 + 32:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        if self.incoming.writing:
            raise _RefusedError(NRC_CONDITIONS_NOT_CORRECT)
        self._announced = bytes(request[3:])
        return bytes((SID_WRITE_DATA_BY_IDENTIFIER + POSITIVE_OFFSET,)) + request[1:3]

    def _request_download(self, request: bytes, now: float) -> Optional[bytes]:
        if not self.unlocked:
            raise _RefusedError(NRC_SECURITY_ACCESS_DENIED)
        if len(request) < 3:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        data_format, length_format = request[1], request[2]
        address_bytes, size_bytes = length_format & 0x0F, length_format >> 4
        if not (1 <= address_bytes <= 4 and 1 <= size_bytes <= 4):
            raise _RefusedError(NRC_REQUEST_OUT_OF_RANGE)
        if len(request) != 3 + address_bytes + size_bytes:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        if data_format != DATA_FORMAT_PLAIN:
            raise _RefusedError(NRC_REQUEST_OUT_OF_RANGE)
        if self.incoming.writing:
            raise _RefusedError(NRC_CONDITIONS_NOT_CORRECT)
        if self._announced is None:
            # "Wrong order", but ISO 14229-1 gives RequestDownload no 0x24: conditionsNotCorrect.
            raise _RefusedError(NRC_CONDITIONS_NOT_CORRECT)
        offset = int.from_bytes(request[3 : 3 + address_bytes], "big")
        size = int.from_bytes(request[3 + address_bytes :], "big")
        if size == 0 or size > self.max_package_bytes:
            self._report(
                f"too_large: {size} bytes announced; this appliance accepts 1 to {self.max_package_bytes}"
            )
            raise _RefusedError(NRC_REQUEST_OUT_OF_RANGE)
        if offset > size:
            raise _RefusedError(NRC_REQUEST_OUT_OF_RANGE)
        try:
            self.incoming.begin(offset, size, self._announced)
        except TransferRangeError as err:
            self._report(f"bad_offset: {err}")
            raise _RefusedError(NRC_REQUEST_OUT_OF_RANGE) from None
        except (NoSpaceError, StagingIOError) as err:
            self._report(f"no_space: {err}" if isinstance(err, NoSpaceError) else f"io_error: {err}")
            logger.warning("UDS: download refused: %s", err)
            raise _RefusedError(NRC_UPLOAD_DOWNLOAD_NOT_ACCEPTED) from None
        self._report("")
        self._expected_counter = 1
        self._previous_block = None
        return bytes((SID_REQUEST_DOWNLOAD + POSITIVE_OFFSET, 0x20)) + self.block_length.to_bytes(2, "big")

    def _transfer_data(self, request: bytes, now: float) -> Optional[bytes]:
        if not self.unlocked:
            raise _RefusedError(NRC_SECURITY_ACCESS_DENIED)
        if len(request) < 3 or len(request) > self.block_length:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        if not self.incoming.writing:
            raise _RefusedError(NRC_REQUEST_SEQUENCE_ERROR)
        counter, data = request[1], bytes(request[2:])
        positive = bytes((SID_TRANSFER_DATA + POSITIVE_OFFSET, counter))
        if counter != self._expected_counter:
            # The previous block again (its response was lost): answer, do not write it twice.
            if self._previous_block is not None and self._previous_block == (counter, data):
                return positive
            raise _RefusedError(NRC_WRONG_BLOCK_SEQUENCE_COUNTER)
        if self.incoming.received + len(data) > self.incoming.size:
            raise _RefusedError(NRC_TRANSFER_DATA_SUSPENDED)
        try:
            self.incoming.write(data)
        except StagingIOError as err:
            self._report(f"io_error: {err}")
            logger.error("UDS: %s", err)
            raise _RefusedError(NRC_GENERAL_PROGRAMMING_FAILURE) from None
        self._previous_block = (counter, data)
        self._expected_counter = (counter + 1) & 0xFF
        return positive

    def _transfer_exit(self, request: bytes, now: float) -> Optional[bytes]:
        if not self.unlocked:
            raise _RefusedError(NRC_SECURITY_ACCESS_DENIED)
        if len(request) != 1:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        if not self.incoming.writing or self.incoming.received != self.incoming.size:
            raise _RefusedError(NRC_REQUEST_SEQUENCE_ERROR)
        try:
            self._slow(SID_REQUEST_TRANSFER_EXIT, self.incoming.finish)
        except TransferIntegrityError as err:
            self._report(f"sha256_mismatch: {err}")
            logger.warning("UDS: %s", err)
            raise _RefusedError(NRC_GENERAL_PROGRAMMING_FAILURE) from None
        except StagingIOError as err:
            self._report(f"io_error: {err}")
            logger.error("UDS: %s", err)
            raise _RefusedError(NRC_GENERAL_PROGRAMMING_FAILURE) from None
        self._previous_block = None
        return bytes((SID_REQUEST_TRANSFER_EXIT + POSITIVE_OFFSET,))

    def _routine_control(self, request: bytes, now: float) -> Optional[bytes]:
        sub, suppress = self._sub_function(request)
        if sub != ROUTINE_START:
            raise _RefusedError(NRC_SUB_FUNCTION_NOT_SUPPORTED)
        if len(request) < 4:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        routine = int.from_bytes(request[2:4], "big")
        if routine not in (ROUTINE_VERIFY, ROUTINE_ACTIVATE, ROUTINE_ROLLBACK):
            raise _RefusedError(NRC_REQUEST_OUT_OF_RANGE)
        if not self.unlocked:
            raise _RefusedError(NRC_SECURITY_ACCESS_DENIED)
        if len(request) != 4:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        status_record = b""
        if routine == ROUTINE_VERIFY:
            if self.incoming.writing or self.incoming.state is not TransferState.COMPLETE:
                raise _RefusedError(NRC_REQUEST_SEQUENCE_ERROR)
            path = self.incoming.received_path
            version = self._call_handler("verify", lambda: self.handler.verify(path))
            status_record = _text(str(version))
            logger.info("UDS: package verified and staged (%s)", version)
        elif routine == ROUTINE_ACTIVATE:
            self._call_handler("activate", self.handler.activate)
            logger.info("UDS: activation started")
        else:
            self._call_handler("rollback", self.handler.rollback)
            logger.info("UDS: rollback started")
        if suppress:
            return None
        return bytes((SID_ROUTINE_CONTROL + POSITIVE_OFFSET, sub)) + request[2:4] + status_record

    # -- helpers --------------------------------------------------------------------------------------

    @staticmethod
    def _sub_function(request: bytes) -> Tuple[int, bool]:
        if len(request) < 2:
            raise _RefusedError(NRC_INCORRECT_MESSAGE_LENGTH)
        return request[1] & ~SUPPRESS_POSITIVE_RESPONSE & 0xFF, bool(request[1] & SUPPRESS_POSITIVE_RESPONSE)

    def _change_session(self, session: int) -> None:
        if self.incoming.writing:
            self.incoming.pause()
            logger.info("UDS: download paused at %d of %d bytes", self.incoming.received, self.incoming.size)
        if session != self.session:
            logger.info("UDS: %s session", "programming" if session == SESSION_PROGRAMMING else "default")
        self.session = session
        self.unlocked = False
        self._seed = None
        self._announced = None
        self._previous_block = None

    def _call_handler(self, what: str, call: Callable[[], _T]) -> _T:
        self.last_error = ""
        try:
            return self._slow(SID_ROUTINE_CONTROL, call)
        except PackageError as err:
            self.last_error = f"{err.reason}: {err}"
            logger.warning("UDS: %s refused the package: %s", what, self.last_error)
            raise _RefusedError(NRC_GENERAL_PROGRAMMING_FAILURE) from None
        except UpdateError as err:
            self.last_error = str(err)
            logger.warning("UDS: %s refused: %s", what, err)
            raise _RefusedError(NRC_CONDITIONS_NOT_CORRECT) from None
        except Exception as err:
            self._report(f"internal_error: {type(err).__name__} in {what}", what)
            logger.exception("UDS: %s failed unexpectedly", what)
            raise _RefusedError(NRC_GENERAL_PROGRAMMING_FAILURE) from None

    def _slow(self, service_id: int, call: Callable[[], _T]) -> _T:
        """Run ``call``; while it runs, answer ``7F <sid> 78`` so the tester waits (P2*)."""
        if self.pending is None:
            return call()
        outcome: Dict[str, object] = {}

        def run() -> None:
            try:
                outcome["value"] = call()
            except BaseException as err:  # handed back to the server thread below
                outcome["error"] = err

        worker = threading.Thread(target=run, name="uds-slow")
        worker.start()
        worker.join(FIRST_PENDING_S)
        while worker.is_alive():
            self.pending(service_id)
            worker.join(PENDING_INTERVAL_S)
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]

    def _data_value(self, identifier: int, status: List[UpdateStatus]) -> Optional[bytes]:
        progress = self.incoming.progress()
        if identifier == DID_SOFTWARE_VERSION:
            return __version__.encode("ascii", errors="replace")
        if identifier == DID_BYTES_RECEIVED:
            return progress.received.to_bytes(4, "big")
        if identifier == DID_PACKAGE_SIZE:
            return progress.size.to_bytes(4, "big")
        if identifier == DID_PACKAGE_SHA256:
            return progress.sha256
        if identifier == DID_TRANSFER_STATE:
            return progress.state.value.encode("ascii")
        if identifier in (DID_ACTIVE_VERSION, DID_STAGED_VERSION, DID_SWAP_STATE, DID_LAST_ERROR):
            if not status:
                try:
                    status.append(self.handler.status())
                except Exception:
                    logger.exception("UDS: the update handler's status() failed")
                    raise _RefusedError(NRC_CONDITIONS_NOT_CORRECT) from None
            current = status[0]
            if identifier == DID_ACTIVE_VERSION:
                return _text(current.active_version)
            if identifier == DID_STAGED_VERSION:
                return _text(current.staged_version)
            if identifier == DID_SWAP_STATE:
                return _text(current.swap_state)
            if isinstance(self.handler, UpdateRecorder):
                return _text(current.last_error)  # the handler's record holds the transfer's errors too
            return _text(self.last_error or current.last_error)
        return None

    def _report(self, text: str, source: str = "transfer") -> None:
        """A refusal's text (``""``: the transfer's error is over), also into the handler's update
        record when it keeps one (the swap manager does: FD06 and ``…/model`` come from that record)."""
        self.last_error = text
        handler = self.handler
        if not isinstance(handler, UpdateRecorder):
            return
        try:
            if text:
                handler.record_error(source, text)
            else:
                handler.clear_error(source)
        except Exception:  # the report must not turn a refusal into a crash of the protocol
            logger.exception("UDS: the update handler did not take the error report")


class UdsServer:
    """The UDS server on a python-can bus: a thread running :class:`UdsService` over can-isotp.

    Args:
        config: the appliance configuration; ``updates.security_secret_file`` must be set.
        handler: the update handler (the swap manager).
        bus: an open python-can bus (closed by :meth:`close` only with ``owns_bus``).
        notifier: a python-can ``Notifier`` already reading ``bus``, if the bus is shared; by
            default the server starts its own.
        owns_bus: shut the bus down in :meth:`close` (what :func:`open_uds_server` asks).
        sync_every: blocks between two syncs of the staging file.
        reserve_bytes: free space that must remain after a package.

    Raises:
        UpdateError: the secret file is not configured or unreadable, or the staging folder cannot be
            created.
    """

    def __init__(
        self,
        config: ApplianceConfig,
        handler: UpdateHandler,
        bus: can.BusABC,
        notifier: Optional[can.Notifier] = None,
        owns_bus: bool = False,
        sync_every: int = DEFAULT_SYNC_EVERY,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        secret_file = config.updates.security_secret_file
        if secret_file is None:
            raise UpdateError(
                "updates.security_secret_file is not set: the UDS server needs the SecurityAccess secret"
            )
        secret = read_security_secret(Path(secret_file))
        self.config = config
        self.bus = bus
        self._owns_bus = owns_bus
        self._notifier = notifier
        self._owns_notifier = notifier is None
        self.incoming = IncomingPackage(
            config.updates_staging_dir, sync_every=sync_every, reserve_bytes=reserve_bytes
        )
        self.service = UdsService(config, handler, self.incoming, secret, pending=self._send_pending)
        self._stack: Optional[BoundedNotifierStack] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        #: requests and frames dropped by stacks already stopped
        self._dropped: Tuple[int, int] = (0, 0)
        self._closed = False
        self._errors_log = RateLimitedLog(logger, _ERROR_REPEAT_S)
        self._drops_logged = 0

    def __enter__(self) -> UdsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def progress(self) -> TransferProgress:
        """The staging file's state (for ``…/model``); callable from any thread."""
        return self.incoming.progress()

    def drops(self) -> Dict[str, int]:
        """What a flood made the server drop so far: ``dropped_requests``, ``dropped_frames``."""
        stack = self._stack
        if stack is None:
            return {"dropped_requests": self._dropped[0], "dropped_frames": self._dropped[1]}
        return {
            "dropped_requests": self._dropped[0] + stack.dropped_requests,
            "dropped_frames": self._dropped[1] + stack.dropped_frames,
        }

    @property
    def dropped_requests(self) -> int:
        """Requests dropped unanswered (the oldest waiting) because the server fell behind the bus."""
        return self.drops()["dropped_requests"]

    def start(self) -> None:
        """Start ISO-TP and the server thread.

        Raises:
            RuntimeError: already started or closed.
            UpdateError: ISO-TP or the thread did not start.
        """
        if self._closed or self._thread is not None:
            raise RuntimeError("the UDS server is already started or closed")
        can_config = self.config.updates.can
        if self._notifier is None:
            self._notifier = can.Notifier(self.bus, [], timeout=POLL_S)
        self._stack = BoundedNotifierStack(
            self.bus,
            self._notifier,
            address=isotp_address(can_config, server=True),
            error_handler=self._on_isotp_error,
            params=isotp_params(
                can_config, max_message_bytes=can_config.transfer_block_bytes, logger_name=ISOTP_SERVER_LOGGER
            ),
        )
        try:
            self._stack.start()
        except RuntimeError as err:
            self._stack = None
            self._stop_notifier()
            raise UpdateError(f"ISO-TP did not start on {can_config.channel}: {err}") from err
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="uds-server")
        self._thread.start()
        if not self._ready.wait(5.0):
            self.stop()
            raise UpdateError("the UDS server thread did not start within 5 s")
        logger.info(
            "UDS server listening on %s %s (request id 0x%X, response id 0x%X)",
            can_config.interface,
            can_config.channel,
            can_config.rx_id,
            can_config.tx_id,
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (bounded), pause an open download, stop ISO-TP. Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        stopped = True
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                stopped = False
                logger.error(
                    "UDS: the server thread did not stop within %.1f s (a slow verify in the update "
                    "handler?); the staging file is left as last synced",
                    timeout,
                )
        if stopped:
            self.service.close()
        stack, self._stack = self._stack, None
        if stack is not None:
            self._dropped = (
                self._dropped[0] + stack.dropped_requests,
                self._dropped[1] + stack.dropped_frames,
            )
            stack.stop()
        self._stop_notifier()

    def close(self) -> None:
        """Stop, sync and close the staging file, and shut the bus down if owned. Idempotent."""
        if self._closed:
            return
        self.stop()
        self.incoming.close()
        if self._owns_bus:
            self.bus.shutdown()
        self._closed = True

    def _stop_notifier(self) -> None:
        if self._owns_notifier and self._notifier is not None:
            self._notifier.stop(timeout=1.0)
            self._notifier = None

    # -- the thread -----------------------------------------------------------------------------------

    def _run(self) -> None:
        stack = self._stack
        if stack is None:
            return
        self._ready.set()
        while not self._stop.is_set():
            try:
                request = stack.recv(block=True, timeout=POLL_S)
                self._report_drops(stack)
                if request is None:
                    self.service.poll()
                    continue
                response = self.service.handle(bytes(request))
                if response is not None:
                    stack.send(response)
            except Exception:  # the CAN thread must survive anything
                logger.exception("UDS: the server loop failed; going on")
                self._stop.wait(POLL_S)

    def _send_pending(self, service_id: int) -> None:
        stack = self._stack
        if stack is not None:
            stack.send(negative_response(service_id, NRC_RESPONSE_PENDING))

    def _report_drops(self, stack: BoundedNotifierStack) -> None:
        """A WARNING (rate-limited) when a flood made the stack drop frames or requests."""
        dropped = stack.dropped_requests + stack.dropped_frames
        if dropped != self._drops_logged:
            self._drops_logged = dropped
            self._errors_log.report(
                "drops",
                "UDS: %d request(s) and %d CAN frame(s) dropped so far: a node sends faster than the "
                "server answers; check the bus for a misbehaving node",
                stack.dropped_requests,
                stack.dropped_frames,
            )

    def _on_isotp_error(self, error: Exception) -> None:
        # Called on can-isotp's thread. A tester cut mid-message gives one timeout; any node on the
        # bus can give thousands: one WARNING per kind and _ERROR_REPEAT_S, the repeats at TRACE.
        kind = type(error).__name__
        self._errors_log.report(kind, "ISO-TP: %s: %s", kind, error)


def open_uds_server(config: ApplianceConfig, handler: UpdateHandler) -> UdsServer:
    """Open the bus of ``[updates.can]`` and make a server that owns it (not started yet).

    Raises:
        CanLinkError: the bus cannot be opened.
        UpdateError: the secret or the staging folder is not usable.
    """
    bus = open_bus(config.updates.can, server=True)
    try:
        return UdsServer(config, handler, bus, owns_bus=True)
    except BaseException:
        bus.shutdown()
        raise


__all__ = ["MAX_DIDS_PER_READ", "UdsServer", "UdsService", "open_uds_server"]
