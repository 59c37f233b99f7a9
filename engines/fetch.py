"""Fetch model files from their upstream URLs or from a mirror, verified, resumable and atomic.

A file is downloaded to ``<final>.part`` next to its final name, checked against the registry's
size and sha256, fsynced and only then renamed to its final name, so a half or wrong file never
carries the final name. An interrupted download resumes from the ``.part`` file (HTTP ``Range``, or
a seek in a mirror folder); transient network errors are retried with exponential back-off.

Sources:

* ``None``: each model's upstream URL from the registry;
* a folder (or ``file://`` URL) laid out like ``shared/models``: ``<folder>/<spec.file>``;
* an ``http(s)://`` base URL of such a folder: ``<url>/<spec.file>``.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterator, List, Optional, Sequence, Tuple

from .errors import ModelFetchError, ModelIntegrityError
from .files import CHUNK_BYTES, PathLike, commit_file, digest_and_size
from .registry import ModelSpec
from .store import ModelStore

logger = logging.getLogger(__name__)

USER_AGENT = "face-appliance-model-fetch/1"
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class _TransientError(Exception):
    """A failure worth retrying: the network, not the data."""


@dataclass(frozen=True)
class FetchResult:
    """What :meth:`ModelFetcher.fetch` did for one model."""

    spec: ModelSpec
    path: Path
    action: str  # "present", "downloaded", "resumed"
    bytes_transferred: int
    source: str


class _Source(ABC):
    @abstractmethod
    def locate(self, spec: ModelSpec) -> str:
        """The URL or path ``spec`` is read from (for messages)."""

    @abstractmethod
    def open(self, spec: ModelSpec, offset: int) -> ContextManager[Tuple[BinaryIO, int, Optional[int]]]:
        """Open ``spec``'s bytes from ``offset``.

        Yields the stream, the offset it really starts at, and the total size the source announced
        (``None`` when it did not), so a connection closed early is told from a short file.
        """


class _FolderSource(_Source):
    def __init__(self, root: Path) -> None:
        self.root = root

    def locate(self, spec: ModelSpec) -> str:
        return os.fspath(self.root / spec.file)

    @contextlib.contextmanager
    def open(self, spec: ModelSpec, offset: int) -> Iterator[Tuple[BinaryIO, int, Optional[int]]]:
        path = self.root / spec.file
        try:
            stream = open(path, "rb")
        except FileNotFoundError:
            raise ModelFetchError(f"{spec.name}: {path} does not exist in the mirror") from None
        except OSError as err:
            raise ModelFetchError(f"{spec.name}: cannot read {path}: {err.strerror}") from err
        with stream:
            size = os.fstat(stream.fileno()).st_size
            start = offset if 0 < offset <= size else 0
            stream.seek(start)
            yield stream, start, None


class _HttpSource(_Source):
    def __init__(self, base_url: Optional[str], timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/") + "/" if base_url else None
        self.timeout_s = timeout_s

    def locate(self, spec: ModelSpec) -> str:
        if self.base_url is None:
            return spec.url
        return self.base_url + urllib.parse.quote(spec.file)

    @contextlib.contextmanager
    def open(self, spec: ModelSpec, offset: int) -> Iterator[Tuple[BinaryIO, int, Optional[int]]]:
        url = self.locate(spec)
        headers = {"User-Agent": USER_AGENT}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset > 0:  # the part file is not a prefix we can extend
                raise _TransientError(f"server refused resuming at byte {offset} (416)") from err
            if err.code in _TRANSIENT_HTTP:
                raise _TransientError(f"HTTP {err.code} {err.reason} from {url}") from err
            raise ModelFetchError(f"{spec.name}: HTTP {err.code} {err.reason} from {url}") from err
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise _TransientError(f"cannot reach {url}: {reason}") from err
        with response:
            start = 0
            if response.status == 206:
                content_range = response.headers.get("Content-Range", "")
                start = _range_start(content_range)
                if start != offset:
                    raise _TransientError(f"server resumed at {content_range!r}, asked for byte {offset}")
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None and length.isdigit() else None
            if total is not None and total > spec.size:
                raise ModelIntegrityError(
                    f"{spec.name}: {url} offers {total} bytes, the registry expects "
                    f"{spec.size}; refusing the download"
                )
            yield response, start, total


def _range_start(content_range: str) -> int:
    # "bytes 1000-2047/2048"
    try:
        return int(content_range.split()[1].split("-", maxsplit=1)[0])
    except (IndexError, ValueError):
        return -1


def make_source(source: Optional[str], timeout_s: float = 30.0) -> _Source:
    """The source for a ``--from`` value: ``None`` (upstream), a folder, or a URL."""
    if source is None:
        return _HttpSource(None, timeout_s)
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        return _HttpSource(source, timeout_s)
    if parsed.scheme == "file":
        return _FolderSource(Path(urllib.request.url2pathname(parsed.path)))
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ModelFetchError(
            f"unsupported source {source!r}: give a folder, file://, http:// or https:// URL"
        )
    folder = Path(source)
    if not folder.is_dir():
        raise ModelFetchError(f"model mirror {source!r} is not a folder")
    return _FolderSource(folder)


ProgressFactory = Callable[[ModelSpec, int], ContextManager[Callable[[int], object]]]


@contextlib.contextmanager
def _no_progress(spec: ModelSpec, initial: int) -> Iterator[Callable[[int], object]]:
    yield lambda n: None


def tqdm_progress(spec: ModelSpec, initial: int) -> ContextManager[Callable[[int], object]]:
    """A byte progress bar on stderr (tqdm), starting at ``initial`` for a resumed file."""
    from tqdm import tqdm

    @contextlib.contextmanager
    def bar() -> Iterator[Callable[[int], object]]:
        with tqdm(
            total=spec.size,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=spec.name,
            leave=True,
            dynamic_ncols=True,
            disable=None,  # None: off when not a terminal
        ) as progress:
            yield progress.update

    return bar()


class ModelFetcher:
    """Fetches registry models into a models directory.

    Args:
        dest: the models directory; files go to ``dest/<spec.file>``.
        source: ``None`` for upstream URLs, else a mirror folder or base URL.
        retries: attempts after the first one for transient failures.
        backoff_s: first retry delay; doubles per retry, capped at 30 s.
        progress: a factory of progress callbacks (see :func:`tqdm_progress`), or ``None``.
    """

    def __init__(
        self,
        dest: PathLike,
        source: Optional[str] = None,
        retries: int = 4,
        timeout_s: float = 30.0,
        backoff_s: float = 1.0,
        progress: Optional[ProgressFactory] = None,
    ) -> None:
        self.store = ModelStore(dest)
        self.source = make_source(source, timeout_s)
        self.retries = max(0, retries)
        self.backoff_s = backoff_s
        self.progress: ProgressFactory = progress or _no_progress

    def fetch(self, spec: ModelSpec) -> FetchResult:
        """Make ``dest/<spec.file>`` the verified file, downloading only what is missing.

        Raises:
            ModelIntegrityError: the source's bytes do not match the registry (nothing is kept).
            ModelFetchError: the source is unreachable after all retries, answers 404, or the disk
                is full (a ``.part`` file is kept for a later resume where that makes sense).
        """
        final = self.store.path(spec)
        where = self.source.locate(spec)
        status = self.store.check(spec)
        if status.ok:
            logger.debug("%s already present and verified at %s", spec.name, final)
            return FetchResult(spec, final, "present", 0, where)
        if final.exists():
            logger.warning("%s: replacing the file at %s (%s)", spec.name, final, status.detail)
        final.parent.mkdir(parents=True, exist_ok=True)
        part = final.with_name(final.name + ".part")

        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(30.0, self.backoff_s * 2 ** (attempt - 1))
                logger.warning(
                    "%s: %s; retrying in %.1f s (attempt %d of %d)",
                    spec.name,
                    last_error,
                    delay,
                    attempt + 1,
                    self.retries + 1,
                )
                time.sleep(delay)
            offset = _usable_part_size(part, spec.size)
            try:
                start, transferred = self._download(spec, part, offset)
            except _TransientError as err:
                last_error = str(err)
                continue
            digest, size = digest_and_size(part)
            if size == spec.size and digest == spec.sha256:
                commit_file(part, final)
                action = "resumed" if start > 0 else "downloaded"
                logger.info("%s: %s %d bytes from %s, sha256 verified", spec.name, action, transferred, where)
                return FetchResult(spec, final, action, transferred, where)
            if start > 0 and attempt < self.retries:
                # The kept prefix may be what is wrong (a different file was interrupted there).
                last_error = f"resumed file does not verify (sha256 {digest}); starting over"
                part.unlink()
                continue
            part.unlink()
            raise ModelIntegrityError(
                f"{spec.name}: {where} is not the registry's file {spec.file}: got {size} bytes with "
                f"sha256 {digest}, expected {spec.size} bytes with sha256 {spec.sha256}. Nothing was "
                f"installed; check the mirror or the upstream URL."
            )
        raise ModelFetchError(
            f"{spec.name}: giving up on {where} after {self.retries + 1} attempts: {last_error}. "
            f"Run the command again to resume ({part.name} is kept)."
        )

    def fetch_all(self, specs: Sequence[ModelSpec]) -> Tuple[List[FetchResult], List[Exception]]:
        """Fetch each model; one failure does not stop the others. Returns results and errors."""
        results: List[FetchResult] = []
        errors: List[Exception] = []
        for spec in specs:
            try:
                results.append(self.fetch(spec))
            except ModelFetchError as err:
                logger.error("%s", err)
                errors.append(err)
        return results, errors

    def _download(self, spec: ModelSpec, part: Path, offset: int) -> Tuple[int, int]:
        """Append the source's bytes from ``offset`` to ``part``; returns (start offset, bytes written)."""
        transferred = 0
        with self.source.open(spec, offset) as (stream, start, announced):
            with open(part, "ab" if start > 0 else "wb") as out, self.progress(spec, start) as advance:
                if start > 0:
                    out.truncate(start)
                    out.seek(start)
                written = start
                while True:
                    try:
                        chunk = stream.read(CHUNK_BYTES)
                    except (OSError, http.client.HTTPException) as err:
                        out.flush()
                        raise _TransientError(f"transfer interrupted after {written} bytes: {err!r}") from err
                    if not chunk:
                        if announced is not None and written < announced:
                            # http.client returns b"" rather than raising when a peer closes early
                            out.flush()
                            raise _TransientError(f"connection closed after {written} of {announced} bytes")
                        break
                    written += len(chunk)
                    if written > spec.size:
                        out.close()
                        part.unlink()
                        raise ModelIntegrityError(
                            f"{spec.name}: {self.source.locate(spec)} sends more than the registry's "
                            f"{spec.size} bytes; refusing the download"
                        )
                    try:
                        out.write(chunk)
                    except OSError as err:
                        hint = " (disk full)" if err.errno == errno.ENOSPC else ""
                        raise ModelFetchError(
                            f"{spec.name}: cannot write {part}{hint}: {err.strerror}"
                        ) from err
                    transferred += len(chunk)
                    advance(len(chunk))
        return start, transferred


def _usable_part_size(part: Path, expected: int) -> int:
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0
    if size > expected:  # cannot be a prefix of the right file
        part.unlink()
        return 0
    return size
