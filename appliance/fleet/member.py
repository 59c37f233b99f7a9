"""The door's side of the fleet: records from the site's authority, verified, decrypted and applied.

Threads and ownership:

* paho's network thread hands each message on the site's record and manifest topics to
  :meth:`FleetMember.receive`, which only queues it (bounded by ``fleet.max_pending``; a message that
  does not fit is counted and dropped — retained records come again at the next connect).
* the **fleet** thread (this module) verifies the signature (against ``fleet.trusted_keys_dir``),
  decrypts (``fleet.fleet_key_file``), validates and decodes the crops — the work that needs no
  model — and batches what passed.
* the **pipeline** thread, the one owner of the models, embeds the crops with *this door's* active
  embedder, one embedder batch (``embedder.batch_size`` crops) per job
  (:meth:`appliance.runtime.ModelRuntime.submit`) between two frames: that is all the door's frames
  wait for, and a catch-up's jobs take turns with the frames. While the door's cameras track a face,
  a job embeds one record's crops instead: someone waiting at the door waits for less.
* the fleet thread stores each record in one transaction (identity, policy, templates, revision) and
  updates the search index, under the gallery's change lock as the command thread's removals do,
  while the pipeline thread embeds the next batch. Tombstones and the manifest's removals need no
  model and never reach the pipeline thread. A model switch may come between an embedding and its
  store: the gallery refuses embeddings of an embedder it no longer holds
  (:class:`~appliance.gallery.errors.StaleEmbeddingError`, checked under the lock the switch holds
  too), and the rest is embedded again. A model swap later re-embeds these templates from their
  crops like local ones.

Rules:

* A record is applied only when its revision is newer than the one this door applied for that id
  (records and tombstones alike): a stale or replayed record never wins. The same revision again —
  every retained record comes back at each reconnect — is skipped quietly.
* A tombstone deletes the identity for real (as ``remove`` does) and its revision is remembered.
* A record without crops is an identity without a face (card and PIN only): nothing reaches the
  pipeline thread, and the templates the door held of it (enrolled and adaptive), its impostor
  examples and look-alikes are deleted for real in the record's transaction (consent withdrawn).
* The signed manifest lists the site's live identities. Fleet identities this door holds that are
  not in a newer manifest (their tombstones pruned while the door was away) are removed; the ones it
  lists that this door lacks (or holds at an older revision) are asked for again, by topic, in chunks
  of :data:`FETCH_CHUNK` — a broker drops part of a large retained burst (Mosquitto sends at most
  ``max_queued_messages`` at once), and a fresh door must still get every record.
* What waits to be applied is bounded by count (``fleet.max_pending``) and by bytes
  (``fleet.max_pending_mb``); what does not fit is dropped, counted and fetched again later.
* A local enrolment is never overwritten or removed by the fleet (refused: ``local_identity``).
* A refused record changes nothing; it is counted, shown in ``…/state`` (``fleet.refused``) and
  logged (rate-limited), with its reason.
* After every change the door publishes its digest document, retained, on
  ``{prefix}/{site}/doors/{device_id}``: the count and the hash over ``(id, revision)`` of the fleet
  identities it holds, so ``fleet status`` tells in step from not.
* **Look-alikes.** Before a record is stored, its faces are searched in this door's gallery: another
  identity they match at ``gallery.duplicate_threshold`` (one person under two badges — removing one
  would leave them let in as the other — or twins) is stored with it as a look-alike, and the digest
  lists the best of them for ``fleet status``. The authority keeps no faces, so only a door can
  tell; a look-alike leaves with either identity, and a newer revision finds its own again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from ..events import rfc3339_now
from ..gallery.errors import IdentityError, StaleEmbeddingError
from ..logs import RateLimitedLog
from ..metrics import Latencies
from .door_settings import FleetConfig
from .errors import FleetError
from .records import (
    CROP_SIDE,
    MAX_LOOK_ALIKES_LISTED,
    FleetRecordError,
    IdentityRecord,
    LookAlikeNote,
    Manifest,
    Refusal,
    Tombstone,
    door_document,
    door_topic,
    fleet_digest,
    fleet_key_id,
    manifest_topic,
    open_manifest,
    open_record,
    read_fleet_key,
    read_previous_fleet_key,
    record_topic,
    records_filter,
)

if TYPE_CHECKING:
    from ..gallery.gallery import Gallery
    from ..gallery.store import LookAlike
    from ..runtime import ModelRuntime

logger = logging.getLogger(__name__)

#: Crops (or records) taken from the queue per batch at most; the digest is published after each.
CROPS_PER_BATCH = 32
#: Embeddings of one batch made again at most this often when model switches keep coming between
#: the embedding and the store.
EMBED_TRIES = 3
#: How long the fleet thread waits for the pipeline thread to take an embedding job.
JOB_TIMEOUT_S = 60.0
#: Retried after a batch that could not be applied (the pipeline stopping or busy, the store failing).
RETRY_S = 1.0
#: Record topics asked for again per SUBSCRIBE when the manifest lists what this door lacks: a broker
#: sends at most ``max_queued_messages`` (Mosquitto: 1000) to a client at once and drops the rest of
#: a big retained burst, so a fresh door fetches what it missed in small chunks.
FETCH_CHUNK = 500
#: The quiet time (no record waiting) before missing records are asked for again.
FETCH_IDLE_S = 1.0
#: Identities listed per face when a record's faces are searched for look-alikes (its own older
#: revision may take one of them).
LOOK_ALIKE_DEPTH = 4

Record = Union[IdentityRecord, Tombstone]


class FleetMember:
    """This door's membership of the site's fleet.

    Args:
        config: the ``[fleet]`` section.
        device_id: this door's id (its digest topic).
        runtime: the model runtime; batches run on its owner thread.
        publish: ``publish(topic, payload)`` of a retained document (:meth:`MqttLink.publish_retained`).
        in_view: whether the door's cameras track a face now (:attr:`appliance.pipeline.Pipeline.
            faces_in_view`): then a catch-up job embeds what fits in ``config.in_view_job_ms``
            (:class:`EmbeddingPace`).

    Raises:
        FleetError: the fleet key or the trusted authority keys cannot be read.
    """

    def __init__(
        self,
        config: FleetConfig,
        device_id: str,
        runtime: ModelRuntime,
        publish: Callable[[str, bytes], None],
        in_view: Callable[[], bool] = lambda: False,
    ) -> None:
        from ..updates.keys import load_trusted_keys

        assert (
            config.fleet_key_file is not None and config.trusted_keys_dir is not None
        )  # the config checks it
        self.config = config
        self.device_id = device_id
        self._runtime = runtime
        self._publish = publish
        self._pace = EmbeddingPace(
            runtime.config.embedder.batch_size, config.in_view_job_ms / 1000.0, in_view
        )
        self._key = read_fleet_key(config.fleet_key_file)
        self._previous_key = read_previous_fleet_key(config.previous_fleet_key_file)
        try:
            self._trusted = load_trusted_keys(config.trusted_keys_dir)
        except Exception as err:
            raise FleetError(f"fleet.trusted_keys_dir: {err}") from None
        if not self._trusted:
            raise FleetError(
                f"fleet.trusted_keys_dir {config.trusted_keys_dir} holds no authority key (.pub): every record "
                "would be refused; copy the authority's public key there"
            )
        self._records_filter = records_filter(config.prefix, config.site)
        self._manifest_topic = manifest_topic(config.prefix, config.site)
        self._door_topic = door_topic(config.prefix, config.site, device_id)
        self._queue: queue.Queue = queue.Queue(maxsize=config.max_pending)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._warnings = RateLimitedLog(logger)
        self._dropped = 0
        self._applied_total = 0
        self._removed_total = 0
        self._refused = 0
        self._last_refusal: Optional[Dict[str, Any]] = None
        self._manifest_revision: Optional[int] = None
        self._manifest: Optional[Manifest] = None
        #: ``fetch(topics)``: ask the broker for these retained records again (MqttLink.fetch_retained).
        self.fetch: Optional[Callable[[List[str]], bool]] = None
        self._fetch_after = 0.0
        self._fetched_rounds = 0
        self._queued_bytes = 0
        self._entries: Dict[str, int] = {}
        self._look_alikes: List[LookAlike] = []  # the best MAX_LOOK_ALIKES_LISTED
        self._look_alike_count = 0
        #: The store's commits and data version when what it holds was last read.
        self._store_seen: Tuple[int, int] = (-1, -1)
        self._published: Optional[bytes] = None

    # -- wiring (before the link starts) ---------------------------------------------------------------

    def subscriptions(self) -> List[Tuple[str, Callable[[str, bytes, bool], None]]]:
        """``(topic filter, handler)`` pairs for :meth:`MqttLink.subscribe`."""
        # The manifest first: its retained copy then comes before the burst of records a broker may cut.
        return [(self._manifest_topic, self.receive), (self._records_filter, self.receive)]

    def receive(self, topic: str, payload: bytes, retained: bool) -> None:
        """A message from the broker (paho's thread): queued, never processed here."""
        if not payload:
            return  # a cleared retained record (the authority pruned an old tombstone)
        with self._lock:
            full = self._queued_bytes + len(payload) > self.config.max_pending_mb * 2**20
            if not full:
                self._queued_bytes += len(payload)
        try:
            if full:
                raise queue.Full
            self._queue.put_nowait((topic, payload))
        except queue.Full:
            with self._lock:
                self._dropped += 1
                if not full:
                    self._queued_bytes -= len(payload)
            self._warnings.report(
                "full",
                "fleet: %d records (or fleet.max_pending_mb) are waiting already; one was dropped (it is asked "
                "for again once the queue is empty)",
                self.config.max_pending,
            )

    # -- life cycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Read what this door holds, publish its digest, and start the fleet thread."""
        self._read_held()
        self._publish_digest()
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()
        logger.info(
            "fleet: site %s, %d identities from the fleet held here", self.config.site, len(self._entries)
        )

    def close(self, timeout: float) -> bool:
        """Stop the fleet thread within ``timeout`` seconds (what is queued comes again at the next
        start). Returns whether it has ended: until then it may be changing the gallery."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.0, timeout))
            if self._thread.is_alive():
                logger.warning("fleet: the fleet thread did not stop in time")
                return False
        return True

    def state(self) -> Dict[str, Any]:
        """``…/state`` → ``fleet``."""
        with self._lock:
            return {
                "site": self.config.site,
                "key_id": fleet_key_id(self._key),
                "previous_key_id": None if self._previous_key is None else fleet_key_id(self._previous_key),
                "applied": len(self._entries),
                "digest": fleet_digest(self._entries),
                "manifest_revision": self._manifest_revision,
                "pending": self._queue.qsize(),
                "missing": len(self._missing()),
                "dropped": self._dropped,
                "changes": self._applied_total + self._removed_total,
                "refused": {"count": self._refused, "last": self._last_refusal},
                "jobs_in_view_ms": self._pace.document(),
                "look_alikes": {
                    "count": self._look_alike_count,
                    "listed": [
                        {"id": pair.id, "like": pair.like_id, "score": round(pair.score, 4)}
                        for pair in self._look_alikes
                    ],
                },
            }

    # -- the fleet thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._fetch_missing()
                self._follow_local_changes()
                continue
            # Quiet time after a message, without cutting short the back-off of a fetch whose
            # records keep arriving and not settling it (an older record retained in their place).
            self._fetch_after = max(self._fetch_after, time.monotonic() + FETCH_IDLE_S)
            batch: List[Record] = []
            manifests: List[Manifest] = []
            crops = 0
            item: Optional[Tuple[str, bytes]] = first
            while item is not None:
                opened = self._open(*item)
                if isinstance(opened, Manifest):
                    manifests.append(opened)
                elif opened is not None:
                    batch.append(opened)
                    crops += len(opened.crops) if isinstance(opened, IdentityRecord) else 0
                if crops >= CROPS_PER_BATCH or len(batch) >= CROPS_PER_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = None
            try:
                if batch:
                    self._apply(batch)
                for manifest in manifests:
                    self._apply_manifest(manifest)
            except Exception as err:  # the pipeline is stopping or busy: the broker sends them again
                if self._stop.is_set():
                    return
                logger.warning("fleet: %d record(s) not applied now (%s); retrying", len(batch), err)
                for record in batch:
                    self._requeue(record)
                time.sleep(RETRY_S)
                continue
            self._publish_digest()

    def _requeue(self, record: Record) -> None:
        """Put a verified record back (as an already opened item) for the next batch."""
        try:
            self._queue.put_nowait(("", record))  # type: ignore[arg-type]
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def _missing(self) -> List[str]:
        """Ids the last manifest lists at a newer revision than this door holds (caller may hold no lock)."""
        manifest = self._manifest
        if manifest is None:
            return []
        entries = self._entries
        return [i for i, revision in manifest.entries.items() if entries.get(i, -1) < revision]

    def _fetch_missing(self) -> None:
        """With nothing waiting: ask the broker again for the records the manifest says are missing."""
        if self.fetch is None or time.monotonic() < self._fetch_after:
            return
        if self._manifest is None:  # none yet (or the broker cut it from a burst): ask for it alone
            chunk: List[str] = []
            topics = [self._manifest_topic]
        else:
            missing = self._missing()
            if not missing:
                self._fetched_rounds = 0
                return
            chunk = sorted(missing)[:FETCH_CHUNK]
            topics = [record_topic(self.config.prefix, self.config.site, i) for i in chunk]
        self._fetched_rounds += 1
        # Backs off while the same records keep not arriving (removed by the authority meanwhile, or
        # refused): the next manifest settles it.
        self._fetch_after = time.monotonic() + min(60.0, FETCH_IDLE_S * self._fetched_rounds)
        if self.fetch(topics) and chunk:
            logger.info(
                "fleet: asking again for %d records the manifest lists and this door lacks", len(chunk)
            )

    def _open(self, topic: str, payload: Any) -> Union[Record, Manifest, None]:
        """Verify, decrypt and validate one message; ``None`` (counted, logged) when refused."""
        if not topic:
            return payload  # requeued after a failed batch: verified already
        with self._lock:
            self._queued_bytes = max(0, self._queued_bytes - len(payload))
        try:
            if topic == self._manifest_topic:
                return open_manifest(payload, self.config.site, self._trusted)
            topic_id = topic.rsplit("/", 1)[-1]
            return open_record(
                payload, self.config.site, self._key, self._trusted, topic_id, self._previous_key
            )
        except FleetRecordError as err:
            self._refuse(topic.rsplit("/", 1)[-1], err.reason, str(err))
            return None

    def _refuse(self, identity_id: str, reason: str, message: str) -> None:
        with self._lock:
            self._refused += 1
            self._last_refusal = {"id": identity_id[:64], "reason": reason, "at": rfc3339_now()}
        self._warnings.report(
            reason,
            "fleet: a record for %s was refused (%s): %s; nothing changed",
            identity_id[:64],
            reason,
            message,
        )

    def _gallery(self) -> Gallery:
        gallery = self._runtime.gallery
        if gallery is None:
            raise FleetError("the gallery is not open")
        return gallery

    def _embed(self, crops: np.ndarray) -> PipelineEmbedding:
        return PipelineEmbedding(self._runtime, crops, self._stop, self._pace)

    def _apply(self, batch: List[Record]) -> None:
        """Apply a batch (this thread; the embedding on the pipeline thread)."""
        gallery = self._gallery()
        applied, removed, refusals = apply_batch(
            gallery,
            batch,
            self._embed,
            self._pace.crops,
            save=self._queue.empty(),
            look_alike_threshold=self._runtime.config.gallery.duplicate_threshold,
        )
        with self._lock:
            self._applied_total += applied
            self._removed_total += removed
        self._read_held()
        for identity_id, reason, message in refusals:
            self._refuse(identity_id, reason, message)

    def _apply_manifest(self, manifest: Manifest) -> None:
        with self._lock:
            if self._manifest_revision is not None and manifest.revision <= self._manifest_revision:
                return
        gallery = self._gallery()
        removed = prune_to_manifest(gallery, manifest)
        with self._lock:
            self._manifest_revision = manifest.revision
            self._manifest = manifest
            self._removed_total += removed
        self._read_held()
        if removed:
            logger.info("fleet: %d identit(ies) gone from the site's manifest were removed", removed)

    def _read_held(self) -> bool:
        """The fleet identities this door holds and its look-alikes, from the store; whether they
        changed."""
        store = self._gallery().store
        self._store_seen = store.change_mark()
        entries = store.fleet_identities()
        count, look_alikes = store.look_alikes(MAX_LOOK_ALIKES_LISTED)
        with self._lock:
            changed = (entries, count, look_alikes) != (
                self._entries,
                self._look_alike_count,
                self._look_alikes,
            )
            self._entries = entries
            self._look_alike_count, self._look_alikes = count, look_alikes
        return changed

    def _follow_local_changes(self) -> None:
        """A change made here rather than by the fleet (a local identity removed takes its
        look-alikes with it; a pair marked distinct by the ``distinct`` command, or by ``gallery
        distinct`` beside the daemon) shows in the digest once the fleet thread is idle."""
        store = self._gallery().store
        if store.change_mark() != self._store_seen and self._read_held():
            self._publish_digest()

    def _publish_digest(self) -> None:
        import json

        with self._lock:
            last = self._last_refusal
            # A local identity's id stays on the door (it is often made from the person's name).
            look_alikes = [
                LookAlikeNote(pair.id, pair.like_id if pair.like_id in self._entries else None, pair.score)
                for pair in self._look_alikes
            ]
            document = door_document(
                self.device_id,
                self.config.site,
                self._manifest_revision,
                self._entries,
                self._refused,
                None if last is None else Refusal(last["id"], last["reason"], last["at"]),
                rfc3339_now(),
                look_alikes,
                self._look_alike_count,
            )
        payload = json.dumps(document, separators=(",", ":")).encode("utf-8")
        if payload != self._published:
            self._publish(self._door_topic, payload)
            self._published = payload


# -- the batch's steps -----------------------------------------------------------------------------------


def embed_crops(runtime: ModelRuntime, crops: np.ndarray) -> Tuple[str, np.ndarray]:
    """(Pipeline thread.) ``(N, 112, 112, 3)`` uint8 crops → the active embedder's ``name@version``
    and its ``(N, D)`` float32 unit vectors, read together so that they cannot disagree."""
    embedder = runtime.analyzer.embedder
    return embedder.version, embedder.embed(crops)


class EmbeddingJob(Protocol):
    """An embedding under way: ``result()`` → ``(embedder version, (N, D) float32)``; ``cancel()``
    drops it if it has not started (a :class:`concurrent.futures.Future` is one)."""

    def result(self) -> Tuple[str, np.ndarray]: ...

    def cancel(self) -> bool: ...


class EmbeddingPace:
    """How many crops the next catch-up job may embed between two frames (asked as each job starts).

    Nobody at the door: the embedder's batch. Someone at the door (``in_view()``): as many as fit in
    ``in_view_s`` at the cost per crop of the last job, timed on the pipeline thread (:meth:`timed`),
    so that someone at the door waits about that long between two frames whatever the models cost
    here; at least one record (:func:`apply_batch`). The cost per crop of a batch is at most that of
    a smaller one (a batch saves per-call work), so sizing from it converges on a job of
    ``in_view_s`` from below and shrinks at once after a slow job. Before any job is timed: one crop.

    A job is sized when its embedding is handed over, which may be a few frames before it runs. One
    sized for nobody that finds someone in view when it starts is sized again there
    (:meth:`in_view_now`, :class:`PipelineEmbedding`): it embeds what fits and leaves the rest for
    the next turns. :attr:`jobs_in_view` keeps the jobs that ran while someone was in view apart by
    how they were sized (``sized_in_view``; ``resized_at_start``), in ms.

    Args:
        batch: the embedder batch (``embedder.batch_size``), the most crops a job takes.
        in_view_s: ``fleet.in_view_job_ms`` in seconds.
        in_view: whether the door's cameras track a face now (:attr:`Pipeline.faces_in_view`).
    """

    def __init__(self, batch: int, in_view_s: float, in_view: Callable[[], bool] = lambda: False) -> None:
        self.batch = batch
        self.in_view_s = in_view_s
        self._in_view = in_view
        self._per_crop_s: Optional[float] = None  # written by the pipeline thread, one float
        #: Whether the last :meth:`crops` saw someone in view (the thread that sizes the jobs).
        self.sized_in_view = False
        self.jobs_in_view = Latencies()

    def crops(self) -> int:
        """(The thread that hands the jobs over.) The next job's crops; sets :attr:`sized_in_view`."""
        self.sized_in_view = self._in_view()
        return self._in_view_crops() if self.sized_in_view else self.batch

    def in_view_now(self) -> Optional[int]:
        """(Pipeline thread, as a job starts.) With someone in view, the crops that fit in the budget
        now; ``None`` with nobody."""
        return self._in_view_crops() if self._in_view() else None

    def _in_view_crops(self) -> int:
        per_crop = self._per_crop_s
        if per_crop is None:
            return 1
        return max(1, min(self.batch, int(self.in_view_s / max(per_crop, 1e-6))))

    def timed(self, crops: int, seconds: float, kind: Optional[str] = None) -> None:
        """(Pipeline thread.) One job embedded ``crops`` crops in ``seconds``; ``kind``: how it was
        sized, kept apart when someone was in view (``None``: not known, not kept)."""
        if crops > 0:
            self._per_crop_s = seconds / crops
        if kind is not None and self._in_view():
            self.jobs_in_view.record(kind, seconds * 1000.0)

    def document(self) -> Dict[str, Dict[str, float]]:
        """``{"sized_in_view" | "resized_at_start": {"p50", "p90", "p99" (ms), "n"}}``, for ``…/state``."""
        counts = self.jobs_in_view.counts()
        return {
            kind: {**figures, "n": counts[kind]} for kind, figures in self.jobs_in_view.percentiles().items()
        }


class PipelineEmbedding:
    """:func:`embed_crops` submitted as a job of ``runtime``'s owner thread; :meth:`result` waits for
    it as :meth:`ModelRuntime.call` does (:data:`JOB_TIMEOUT_S` a job, ended by ``stop``). With
    ``pace``, the embedding is timed where it runs, for the next jobs' size; and a job sized for
    nobody that finds someone in view as it starts embeds what fits in the budget and submits the
    rest as a job of its own, for the next turn (:meth:`EmbeddingPace.in_view_now`)."""

    def __init__(
        self,
        runtime: ModelRuntime,
        crops: np.ndarray,
        stop: threading.Event,
        pace: Optional[EmbeddingPace] = None,
    ) -> None:
        self._runtime, self._stop, self._pace = runtime, stop, pace
        self._what = f"embedding {len(crops)} fleet crop(s)"
        self._parts: List[Tuple[str, np.ndarray]] = []  # (version, (n, D) float32), in order
        # Sized just now, on this thread (None without a pace: not known).
        self._sized_in_view = None if pace is None else pace.sized_in_view
        self._future = runtime.submit(lambda rt: self._job(rt, crops), self._what)

    def _job(self, runtime: ModelRuntime, crops: np.ndarray) -> None:
        """(Pipeline thread.) Embed ``crops``, or what fits while someone is in view."""
        pace = self._pace
        take, kind = len(crops), None
        if pace is not None:
            if self._sized_in_view:
                kind = "sized_in_view"
            else:
                fits = pace.in_view_now()
                if fits is not None:  # sized for nobody, and someone came into view since
                    take, kind = min(take, fits), "resized_at_start"
        started = time.perf_counter()
        self._parts.append(embed_crops(runtime, crops[:take]))
        if pace is not None:
            pace.timed(take, time.perf_counter() - started, kind)
        if take < len(crops):
            rest = crops[take:]
            # Assigned before this job's future resolves: result() then waits for the rest, which
            # runs at the next turn (run_jobs runs what was queued when it was called).
            self._future = runtime.submit(lambda rt: self._job(rt, rest), self._what)

    def result(self) -> Tuple[str, np.ndarray]:
        future = None
        while future is not self._future:  # a job that left a rest has set the next one by now
            future = self._future
            self._runtime.wait(future, self._what, JOB_TIMEOUT_S, self._stop)
        versions = sorted({version for version, _ in self._parts})
        # Parts made by two models (a switch came between them) match no gallery: the store refuses
        # them as stale and the crops are embedded again.
        return "+".join(versions), np.concatenate([vectors for _, vectors in self._parts])

    def cancel(self) -> bool:
        return self._future.cancel()


def apply_batch(
    gallery: Gallery,
    batch: List[Record],
    embed: Callable[[np.ndarray], EmbeddingJob],
    crops: Callable[[], int],
    save: bool,
    look_alike_threshold: Optional[float] = None,
) -> Tuple[int, int, List[Tuple[str, str, str]]]:
    """Apply verified records, one store transaction each, off the pipeline thread.

    The records are embedded in groups of at most ``crops()`` crops (more only for one record that
    has more), and the next group's embedding is started before this group is stored: the pipeline
    thread embeds one group while this thread stores the one before. Each group is cut when its
    embedding starts, so its size follows the door (:meth:`EmbeddingPace.crops`: fewer crops while
    someone is at the door).

    Args:
        gallery: the door's gallery; each change holds its change lock.
        batch: the records, in any order (the newest revision of each id wins).
        embed: ``embed(crops)`` starts embedding ``(N, 112, 112, 3)`` uint8 crops where the models
            are, and returns the job.
        crops: how many crops the next group may carry, asked as its embedding starts.
        save: write the index files after the batch (the last batch of a burst); otherwise the
            store holds the truth and the next save or start catches the files up.
        look_alike_threshold: each identity record's faces are searched in the gallery before it
            is stored, and the other identities they match at this score are stored with it as its
            look-alikes (:func:`find_look_alikes`); ``None``: not searched.

    Returns:
        ``(identities applied, identities removed, refusals (id, reason, message))``.

    Raises:
        FleetError: model switches kept coming between the embedding and the store
            (:data:`EMBED_TRIES`); what was applied stays, the rest comes again.
    """
    known = gallery.store.fleet_revisions()
    refusals: List[Tuple[str, str, str]] = []
    pending: List[Record] = []
    for record in _newest_per_id(batch):
        held = known.get(record.id)
        if held is not None and record.revision < held[0]:
            refusals.append(
                (
                    record.id,
                    "replayed",
                    f"revision {record.revision} is older than the {held[0]} applied here",
                )
            )
        elif held is None or record.revision > held[0]:
            pending.append(record)
    rest = deque(pending)

    def next_group() -> List[Record]:
        return _take_group(rest, crops())

    groups = [next_group()] if rest else []
    jobs = [_start(groups[0], embed)] if groups else []  # jobs[i] embeds groups[i]
    applied = removed = tries = 0
    try:
        while groups:
            group, job = groups.pop(0), jobs.pop(0)
            version, vectors_of = _vectors_of(group, job)
            if not groups and rest:  # the next group is embedded while this one is stored
                groups.append(next_group())
                jobs.append(_start(groups[0], embed))
            for position, record in enumerate(group):
                try:
                    if isinstance(record, IdentityRecord) and not len(record.crops):
                        # No face (card and PIN only): nothing embedded, nothing to compare; the
                        # templates this door held of it are deleted with the record's store.
                        store_identity(gallery, record, np.zeros((0, gallery.dim), np.float32))
                        applied += 1
                    elif isinstance(record, IdentityRecord):
                        vectors = vectors_of[record.id]
                        # Not searched with another model's embeddings (a switch came in between):
                        # the store refuses them, and the record is embedded again.
                        look_alikes = (
                            find_look_alikes(gallery, record.id, vectors, look_alike_threshold)
                            if look_alike_threshold is not None and version == gallery.model_version
                            else []
                        )
                        store_identity(gallery, record, vectors, version, look_alikes)
                        applied += 1
                    else:
                        gallery.remove_fleet_identity(record.id, record.revision, save=False)
                        removed += 1
                except StaleEmbeddingError as err:  # a model switch came in between: embed the rest again
                    tries += 1
                    if tries >= EMBED_TRIES:
                        raise FleetError(f"{err}; {EMBED_TRIES} tries, the records come again") from None
                    groups.insert(0, group[position:])
                    jobs.insert(0, _start(groups[0], embed))
                    break
                except IdentityError as err:
                    reason = "local_identity" if "locally" in str(err) else "invalid"
                    refusals.append((record.id, reason, str(err)))
    finally:
        for job in jobs:  # stopped or failed: what has not started need not run
            if job is not None:
                job.cancel()
    if save and (applied or removed):
        gallery.save_index()
    return applied, removed, refusals


def find_look_alikes(
    gallery: Gallery, identity_id: str, embeddings: np.ndarray, threshold: float
) -> List[Tuple[str, float]]:
    """The identities other than ``identity_id`` that any of ``embeddings`` (``(N, D)`` float32, one
    identity's faces) matches at ``threshold`` or above: ``(identity id, best score)``, best first."""
    best: Dict[str, float] = {}
    for candidates in gallery.search(embeddings, LOOK_ALIKE_DEPTH):
        for candidate in candidates:
            if candidate.identity_id != identity_id and candidate.score >= threshold:
                best[candidate.identity_id] = max(candidate.score, best.get(candidate.identity_id, -1.0))
    return sorted(best.items(), key=lambda pair: (-pair[1], pair[0]))


def store_identity(
    gallery: Gallery,
    record: IdentityRecord,
    embeddings: np.ndarray,
    embedded_with: Optional[str] = None,
    look_alikes: Sequence[Tuple[str, float]] = (),
) -> None:
    """One identity record into the gallery, its index files left for the next save
    (:meth:`Gallery.apply_fleet_identity`; ``embeddings``: ``(N, D)`` float32, one per crop;
    ``look_alikes``: :func:`find_look_alikes`). A record without crops stores an identity without a
    face, deleting the templates it held here."""
    crops = np.stack(record.crops) if len(record.crops) else np.zeros((0, CROP_SIDE, CROP_SIDE, 3), np.uint8)
    gallery.apply_fleet_identity(
        record.id,
        record.revision,
        record.name,
        record.external_id,
        record.consent_at,
        record.policy,
        embeddings,
        crops,
        record.qualities,
        save=False,
        embedded_with=embedded_with,
        look_alikes=look_alikes,
    )


def _take_group(records: Deque[Record], crops: int) -> List[Record]:
    """The next group from the front of ``records`` (taken out): the records that carry at most
    ``crops`` crops together (a record with more is a group of its own; a tombstone carries none)."""
    group: List[Record] = []
    taken = 0
    while records:
        record = records[0]
        count = len(record.crops) if isinstance(record, IdentityRecord) else 0
        if group and taken + count > crops:
            break
        group.append(records.popleft())
        taken += count
    return group


def _start(group: List[Record], embed: Callable[[np.ndarray], EmbeddingJob]) -> Optional[EmbeddingJob]:
    """Start embedding the group's crops, all its identity records' in one call (``None``: none)."""
    crops = [crop for record in group if isinstance(record, IdentityRecord) for crop in record.crops]
    return embed(np.stack(crops)) if crops else None


def _vectors_of(group: List[Record], job: Optional[EmbeddingJob]) -> Tuple[str, Dict[str, np.ndarray]]:
    """The group's embeddings once ``job`` is done: ``(version, {id: (N, D) float32})``."""
    if job is None:
        return "", {}
    version, vectors = job.result()
    of: Dict[str, np.ndarray] = {}
    offset = 0
    for record in group:
        if isinstance(record, IdentityRecord):
            of[record.id] = vectors[offset : offset + len(record.crops)]
            offset += len(record.crops)
    return version, of


def _newest_per_id(batch: List[Record]) -> List[Record]:
    newest: Dict[str, Record] = {}
    for record in batch:
        if record.id not in newest or record.revision > newest[record.id].revision:
            newest[record.id] = record
    return list(newest.values())


def prune_to_manifest(gallery: Gallery, manifest: Manifest) -> int:
    """Remove the fleet identities a newer manifest no longer lists; returns how many."""
    removed = 0
    for identity_id, revision in gallery.store.fleet_identities().items():
        if identity_id not in manifest.entries and revision <= manifest.revision:
            gallery.remove_fleet_identity(identity_id, manifest.revision, save=False)
            removed += 1
    if removed:
        gallery.save_index()
    return removed


__all__ = [
    "EmbeddingJob",
    "EmbeddingPace",
    "FleetMember",
    "PipelineEmbedding",
    "apply_batch",
    "embed_crops",
    "find_look_alikes",
    "prune_to_manifest",
]
