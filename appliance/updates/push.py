"""``push-model``: send a model package to an appliance over CAN (UDS client, udsoncan over can-isotp).

The sequence (the server side is :mod:`appliance.updates.uds_server`):

1. programming session (0x10 0x02), SecurityAccess level 1 with the HMAC key;
2. read the appliance's transfer state, package size, package sha256 and bytes received
   (0xFD07, 0xFD04, 0xFD05, 0xFD03). The same package (sha256 *and* size) already complete: skip
   to 5; partly received: **resume** at the bytes received; anything else: start at 0;
3. announce the package's sha256 (WriteDataByIdentifier 0xFD05) and RequestDownload with the
   offset as memoryAddress and the package size as memorySize;
4. TransferData blocks of maxNumberOfBlockLength − 2 bytes; a block without an answer (a lost
   frame, a timeout) is sent again with the same counter, up to ``retries`` times (the appliance
   answers a repeated block without writing it twice); then RequestTransferExit;
5. the verify routine (0xFF01); with ``activate``, the activate routine (0xF001) and the swap
   state (0xFD02) polled until ``done``, ``failed`` or ``rolled_back``;
6. back to the default session.

A refusal ends the push with :class:`PushError` carrying the negative response code and the
appliance's reason (read from 0xFD06). An interrupted push resumes when run again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Iterator, NoReturn, Optional

import can
import isotp
import udsoncan
from udsoncan.client import Client
from udsoncan.configs import default_client_config
from udsoncan.connections import PythonIsoTpConnection
from udsoncan.exceptions import (
    InvalidResponseException,
    NegativeResponseException,
    TimeoutException,
    UnexpectedResponseException,
)

from engines.errors import FileReadError
from engines.files import open_regular

from ..config import UpdatesCanConfig
from .can_link import isotp_address, isotp_params, open_bus
from .errors import UpdateError
from .handler import SWAP_DONE, TERMINAL_SWAP_STATES
from .uds_protocol import (
    DID_ACTIVE_VERSION,
    DID_BYTES_RECEIVED,
    DID_LAST_ERROR,
    DID_PACKAGE_SHA256,
    DID_PACKAGE_SIZE,
    DID_SOFTWARE_VERSION,
    DID_STAGED_VERSION,
    DID_SWAP_STATE,
    DID_TRANSFER_STATE,
    ROUTINE_ACTIVATE,
    ROUTINE_VERIFY,
    SECURITY_LEVEL,
    SESSION_DEFAULT,
    SESSION_PROGRAMMING,
    compute_key,
    nrc_name,
)

logger = logging.getLogger(__name__)

#: Largest package the 32-bit memorySize of RequestDownload can announce.
MAX_PACKAGE_BYTES = 0xFFFFFFFF
#: Longest response the tester accepts (responses are short; status texts at most 255 bytes).
MAX_RESPONSE_BYTES = 4095

#: (total bytes, bytes already there) → a context manager yielding an "n bytes more" callback.
ProgressFactory = Callable[[int, int], ContextManager[Callable[[int], object]]]

#: What a UDS exchange can raise besides a negative response (no answer, a garbled one, the bus).
_LINK_ERRORS = (
    TimeoutException,
    InvalidResponseException,
    UnexpectedResponseException,
    isotp.IsoTpError,
    OSError,
    can.CanError,
)


class PushError(UpdateError):
    """A push that did not complete.

    Attributes:
        step: what was being done (``"RequestDownload"``, ``"verify"``, ``"swap"``, …).
        nrc: the appliance's negative response code, when it answered with one.
        reason: the appliance's last-error text (0xFD06), when it gave one.
    """

    def __init__(self, message: str, step: str, nrc: Optional[int] = None, reason: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.nrc = nrc
        self.reason = reason


@dataclass(frozen=True)
class PushOptions:
    """How a push runs.

    Attributes:
        activate: start the swap after a successful verify and wait for its outcome.
        retries: times a block without an answer is sent again before giving up.
        request_timeout_s: longest wait for one answer, responsePending (0x78) included.
        swap_timeout_s: longest wait for the swap to reach a terminal state.
        poll_interval_s: time between two reads of the swap state.
    """

    activate: bool = False
    retries: int = 3
    request_timeout_s: float = 60.0
    swap_timeout_s: float = 900.0
    poll_interval_s: float = 0.5


@dataclass(frozen=True)
class PushResult:
    """What a push did.

    Attributes:
        size: package bytes; sha256: its hex digest.
        resumed_from: the offset the transfer started at (0: from the start; ``size``: nothing sent).
        sent_bytes: package bytes sent by this run.
        transfer_s: seconds spent in TransferData (0 when nothing was sent).
        staged_version: what the appliance's verify routine reported.
        swap_state: the terminal swap state with ``activate``; ``None`` otherwise.
        active_version: the appliance's active model version(s) at the end.
    """

    size: int
    sha256: str
    resumed_from: int
    sent_bytes: int
    transfer_s: float
    staged_version: str
    swap_state: Optional[str]
    active_version: str

    @property
    def goodput_bytes_per_s(self) -> float:
        """Package bytes per second during the transfer (0 when nothing was sent)."""
        return self.sent_bytes / self.transfer_s if self.transfer_s > 0 else 0.0


class _TextCodec(udsoncan.DidCodec):
    """A UTF-8 text identifier of variable length (read alone: it takes the rest of the response)."""

    def encode(self, *did_value: Any) -> bytes:
        return str(did_value[0]).encode("utf-8")

    def decode(self, did_payload: bytes) -> Any:
        return did_payload.decode("utf-8", errors="replace")

    def __len__(self) -> int:
        raise udsoncan.DidCodec.ReadAllRemainingData


class _BytesCodec(udsoncan.DidCodec):
    """A fixed number of raw bytes."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length

    def encode(self, *did_value: Any) -> bytes:
        value = bytes(did_value[0])
        if len(value) != self.length:
            raise ValueError(f"expected {self.length} bytes, got {len(value)}")
        return value

    def decode(self, did_payload: bytes) -> Any:
        return bytes(did_payload)

    def __len__(self) -> int:
        return self.length


class _Uint32Codec(udsoncan.DidCodec):
    """An unsigned 32-bit big-endian integer."""

    def encode(self, *did_value: Any) -> bytes:
        return int(did_value[0]).to_bytes(4, "big")

    def decode(self, did_payload: bytes) -> Any:
        return int.from_bytes(did_payload, "big")

    def __len__(self) -> int:
        return 4


def data_identifier_codecs() -> Dict[int, udsoncan.DidCodec]:
    """udsoncan codecs of the appliance's data identifiers."""
    return {
        DID_SOFTWARE_VERSION: _TextCodec(),
        DID_ACTIVE_VERSION: _TextCodec(),
        DID_STAGED_VERSION: _TextCodec(),
        DID_SWAP_STATE: _TextCodec(),
        DID_BYTES_RECEIVED: _Uint32Codec(),
        DID_PACKAGE_SIZE: _Uint32Codec(),
        DID_PACKAGE_SHA256: _BytesCodec(32),
        DID_LAST_ERROR: _TextCodec(),
        DID_TRANSFER_STATE: _TextCodec(),
    }


@contextlib.contextmanager
def _no_progress(total: int, initial: int) -> Iterator[Callable[[int], object]]:
    yield lambda n: None


def tqdm_progress(total: int, initial: int) -> ContextManager[Callable[[int], object]]:
    """A byte progress bar on stderr (tqdm: bytes/s and ETA), starting at ``initial`` for a resume."""
    from tqdm import tqdm

    @contextlib.contextmanager
    def bar() -> Iterator[Callable[[int], object]]:
        with tqdm(
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="push",
            leave=True,
            dynamic_ncols=True,
            disable=None,  # None: off when not a terminal
        ) as progress:
            yield progress.update

    return bar()


def package_digest(path: Path) -> bytes:
    """sha256 of a package file (32 bytes)."""
    digest = hashlib.sha256()
    with open_regular(path) as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def _package_size(package: Path) -> int:
    """The size of a package file, refused unless it is a regular file (a FIFO or a device is not).

    Raises:
        PushError: the package is missing, unreadable or not a regular file (step ``package``).
    """
    try:
        with open_regular(package) as stream:
            return os.fstat(stream.fileno()).st_size
    except FileReadError as err:
        raise PushError(f"the package {err}", step="package") from None


class PushClient:
    """A UDS tester session with one appliance; use as a context manager.

    Args:
        can_config: the appliance's ``[updates.can]`` settings (its ids: we send to ``rx_id``).
        secret: the SecurityAccess secret (bytes of the secret file's first line).
        bus: an open python-can bus; not closed here.
        options: timeouts and retries.
    """

    def __init__(
        self,
        can_config: UpdatesCanConfig,
        secret: bytes,
        bus: can.BusABC,
        options: Optional[PushOptions] = None,
    ) -> None:
        self.can_config = can_config
        self.options = options or PushOptions()
        self._notifier = can.Notifier(bus, [], timeout=0.1)
        stack = isotp.NotifierBasedCanStack(
            bus,
            self._notifier,
            address=isotp_address(can_config, server=False),
            error_handler=self._on_isotp_error,
            params=isotp_params(can_config, max_message_bytes=MAX_RESPONSE_BYTES, blocking_send=True),
        )
        self._connection = PythonIsoTpConnection(stack)

        def security_algo(level: int, seed: bytes, params: Any) -> bytes:
            return compute_key(secret, seed)

        config = dict(default_client_config)
        config.update(
            {
                "security_algo": security_algo,
                "data_identifiers": data_identifier_codecs(),
                "request_timeout": self.options.request_timeout_s,
            }
        )
        self.client = Client(self._connection, config=config)  # type: ignore[arg-type]
        self._open = False

    def __enter__(self) -> PushClient:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Start ISO-TP."""
        if not self._open:
            self._connection.open()
            self._open = True

    def close(self) -> None:
        """Stop ISO-TP and the bus reader (the bus stays open). Idempotent."""
        if self._open:
            self._open = False
            self._connection.close()
        self._notifier.stop(timeout=1.0)

    # -- small steps ----------------------------------------------------------------------------------

    def read(self, identifier: int) -> Any:
        """One data identifier's decoded value."""
        return self._request(
            "ReadDataByIdentifier", lambda: self.client.read_data_by_identifier_first(identifier)
        )

    def start_programming(self) -> None:
        """Programming session and SecurityAccess."""
        self._request("DiagnosticSessionControl", lambda: self.client.change_session(SESSION_PROGRAMMING))
        self._request("SecurityAccess", lambda: self.client.unlock_security_access(SECURITY_LEVEL))

    def end_session(self) -> None:
        """Back to the default session (best effort: a failure is only logged)."""
        try:
            self.client.change_session(SESSION_DEFAULT)
        except (NegativeResponseException, *_LINK_ERRORS) as err:
            logger.debug("push: leaving the programming session failed: %s", err)

    # -- the whole push -------------------------------------------------------------------------------

    def push(self, package: Path, progress: Optional[ProgressFactory] = None) -> PushResult:
        """Transfer (or resume), verify and optionally activate one package.

        Raises:
            PushError: the appliance refused a step (``nrc``, ``reason``) or stopped answering.
            OSError: the package cannot be read.
        """
        size = _package_size(package)
        if size == 0 or size > MAX_PACKAGE_BYTES:
            raise PushError(
                f"{package} has {size} bytes; a package has 1 to {MAX_PACKAGE_BYTES}", step="package"
            )
        digest = package_digest(package)
        self.start_programming()
        state = str(self.read(DID_TRANSFER_STATE))
        same = self.read(DID_PACKAGE_SHA256) == digest and self.read(DID_PACKAGE_SIZE) == size
        received = int(self.read(DID_BYTES_RECEIVED))
        sent, transfer_s = 0, 0.0
        if same and state == "complete":
            offset = size
            logger.info("push: the appliance already holds this package; verifying it")
        else:
            offset = received if same and state == "partial" else 0
            if offset:
                logger.info("push: resuming at byte %d of %d", offset, size)
            started = time.monotonic()
            sent = self._transfer(package, size, digest, offset, progress or _no_progress)
            transfer_s = time.monotonic() - started
        verified = self._request("verify", lambda: self.client.start_routine(ROUTINE_VERIFY))
        staged = verified.service_data.routine_status_record.decode("utf-8", errors="replace")
        logger.info("push: verified and staged: %s", staged)
        swap_state: Optional[str] = None
        if self.options.activate:
            self._request("activate", lambda: self.client.start_routine(ROUTINE_ACTIVATE))
            swap_state = self._wait_for_swap()
        active = str(self.read(DID_ACTIVE_VERSION))
        self.end_session()
        if swap_state is not None and swap_state != SWAP_DONE:
            reason = self._last_error()
            raise PushError(
                f"the swap ended {swap_state}: {reason or 'no reason given'}", step="swap", reason=reason
            )
        if swap_state == SWAP_DONE:
            _confirm_active(staged, active)
        return PushResult(
            size=size,
            sha256=digest.hex(),
            resumed_from=offset,
            sent_bytes=sent,
            transfer_s=transfer_s,
            staged_version=staged,
            swap_state=swap_state,
            active_version=active,
        )

    def _transfer(
        self, package: Path, size: int, digest: bytes, offset: int, progress: ProgressFactory
    ) -> int:
        self._request(
            "WriteDataByIdentifier", lambda: self.client.write_data_by_identifier(DID_PACKAGE_SHA256, digest)
        )
        location = udsoncan.MemoryLocation(
            address=offset, memorysize=size, address_format=32, memorysize_format=32
        )
        response = self._request("RequestDownload", lambda: self.client.request_download(location))
        block = int(response.service_data.max_length) - 2
        if block < 1:
            raise PushError(
                f"the appliance allows blocks of {block + 2} bytes; too small", step="RequestDownload"
            )
        counter, position = 1, offset
        with open_regular(package) as stream, progress(size, offset) as advance:
            stream.seek(offset)
            while position < size:
                data = stream.read(min(block, size - position))
                if not data:
                    raise PushError(f"{package} got shorter while it was sent", step="TransferData")
                self._send_block(counter, data, position)
                position += len(data)
                counter = (counter + 1) & 0xFF
                advance(len(data))
        self._request("RequestTransferExit", self.client.request_transfer_exit)
        return position - offset

    def _send_block(self, counter: int, data: bytes, position: int) -> None:
        for attempt in range(self.options.retries + 1):
            try:
                self.client.transfer_data(counter, data)
                return
            except (TimeoutException, isotp.IsoTpError) as err:
                if attempt >= self.options.retries:
                    raise PushError(
                        f"the appliance stopped answering at byte {position} ({err}); {attempt + 1} tries. "
                        "Run push-model again to resume from what it received",
                        step="TransferData",
                    ) from err
                logger.warning(
                    "push: block at byte %d not acknowledged (%s); sending it again", position, err
                )
            except NegativeResponseException as err:
                self._refused("TransferData", err)

    def _wait_for_swap(self) -> str:
        deadline = time.monotonic() + self.options.swap_timeout_s
        last = ""
        while True:
            state = str(self.read(DID_SWAP_STATE))
            if state != last:
                logger.info("push: swap %s", state)
                last = state
            if state in TERMINAL_SWAP_STATES:
                return state
            if time.monotonic() > deadline:
                raise PushError(
                    f"the swap did not finish within {self.options.swap_timeout_s:.0f} s (still {state}); "
                    "its outcome will show in the swap state (0xFD02) and on MQTT",
                    step="swap",
                )
            time.sleep(self.options.poll_interval_s)

    def _request(self, step: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except NegativeResponseException as err:
            self._refused(step, err)
        except (TimeoutException, isotp.IsoTpError) as err:
            raise PushError(
                f"{step}: no answer from the appliance ({err}); check the CAN wiring, the channel, the "
                f"bit rate and the ids (requests to 0x{self.can_config.rx_id:X}, answers from "
                f"0x{self.can_config.tx_id:X})",
                step=step,
            ) from err
        except (InvalidResponseException, UnexpectedResponseException) as err:
            raise PushError(f"{step}: unexpected answer from the appliance: {err}", step=step) from err

    def _refused(self, step: str, err: NegativeResponseException) -> NoReturn:
        code = int(err.response.code)
        reason = self._last_error()
        message = f"{step} refused by the appliance: {nrc_name(code)}"
        if reason:
            message += f": {reason}"
        raise PushError(message, step=step, nrc=code, reason=reason) from err

    def _last_error(self) -> str:
        try:
            return str(self.client.read_data_by_identifier_first(DID_LAST_ERROR))
        except (NegativeResponseException, *_LINK_ERRORS):
            return ""

    def _on_isotp_error(self, error: Exception) -> None:
        logger.debug("push: ISO-TP: %s: %s", type(error).__name__, error)


def names_version(active: str, version: str) -> bool:
    """Whether the active-version text (0xFD00) names ``version``.

    0xFD00 reads like ``"detector=mtcnn@1.0,embedder=mobilefacenet@2.0.0"``; the verify routine
    answers the package's version (``"2.0.0"``) or its ``name@version``.
    """
    for part in (item.strip() for item in active.split(",")):
        value = part.split("=", 1)[-1]
        if version in (part, value, value.rsplit("@", 1)[-1]):
            return True
    return False


def _confirm_active(staged: str, active: str) -> None:
    """Check that the swap reported ``done`` really made the pushed version active.

    UDS on CAN has no sender address: another node answering on the appliance's response id can
    report ``done`` in 0xFD02. The active version read afterwards (0xFD00) must name the version the
    verify routine staged.

    Raises:
        PushError: step ``confirm``.
    """
    if names_version(active, staged):
        return
    raise PushError(
        f"the swap was reported done, but the appliance's active models ({active or 'none reported'}) "
        f"do not include the pushed {staged}: the answer may have come from another node on the bus "
        "(UDS on CAN has no sender address); check the model on the appliance (MQTT …/model, or "
        "read 0xFD00 again) before relying on it",
        step="confirm",
    )


def push_package(
    can_config: UpdatesCanConfig,
    secret: bytes,
    package: Path,
    options: Optional[PushOptions] = None,
    progress: Optional[ProgressFactory] = None,
    bus: Optional[can.BusABC] = None,
) -> PushResult:
    """Open the bus (unless given), push ``package`` and close what was opened.

    Raises:
        CanLinkError: the bus cannot be opened.
        PushError: a step failed.
    """
    own_bus = bus is None
    active_bus = open_bus(can_config, server=False) if bus is None else bus
    try:
        with PushClient(can_config, secret, active_bus, options) as client:
            return client.push(package, progress)
    finally:
        if own_bus:
            active_bus.shutdown()


__all__ = [
    "PushClient",
    "PushError",
    "PushOptions",
    "PushResult",
    "data_identifier_codecs",
    "names_version",
    "push_package",
    "tqdm_progress",
]
