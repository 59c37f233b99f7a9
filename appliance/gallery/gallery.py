"""The gallery: the encrypted template store plus the search index derived from it.

Only templates of the active embedder version are indexed and searched. The index is saved next to
the store with the store's generation, as a snapshot plus an append-only delta of the enrolments
since (:mod:`.delta`: an enrolment writes one small record, a removal a new snapshot); it is rebuilt
when missing, stale (other model version or generation, a delta that does not reach the store's
generation) or corrupt — it never holds anything the store does not.

A missing store is not always a new one: an index saved at a later generation than an empty store
proves that enrolments existed (the database was deleted or truncated). Starting empty would deny
every enrolled person without a word and overwrite the index — the last copy of their templates —
so :meth:`Gallery.open` refuses instead (:func:`check_store_not_lost`).

Two locks, so that the door's search waits for no disk: a change (an enrolment, a removal, a fleet
record, a refresh) holds ``_changes`` from its store transaction to its index files, one change at a
time, so no change comes between the index in memory and the file written from it. A search takes
only ``_lock``, which a change holds just while it swaps or edits the maps beside the index; the
:class:`~.index.TemplateIndex` has locks of its own, so a search also goes on while a template is
added to it, and while a new HNSW graph is built (it waits only for an in-place edit: an exact
index's removal, an HNSW detachment); what it reports goes through the owners map, which a removal
empties first (:meth:`Gallery._update_index`). So a change on one thread — a removal's snapshot
(26 MB at 10⁵ float16 templates, 536 MB for an HNSW graph of 10⁶), a store's fsync, a refresh —
does not hold the searches of another: the daemon runs its removals and its adaptive templates off
the pipeline thread (:mod:`appliance.change_thread`) for that.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from dataclasses import replace as replace_fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Sequence, Tuple

import faiss
import numpy as np

from ..access.policy import IdentityPolicy
from ..config import ApplianceConfig
from ..decisions import Candidate
from .bundle import Bundle, BundleIdentity, export_bundle, open_bundle
from .delta import DEFAULT_COMPACT_MIN_BYTES, DEFAULT_COMPACT_RATIO, DeltaRecord, SavedIndex, saved_generation
from .errors import BundleError, GalleryBusyError, GalleryStoreError, IdentityError, StaleEmbeddingError
from .index import (
    DEFAULT_EF_SEARCH,
    DEFAULT_PREFILTER_ABOVE,
    FLOAT16,
    HNSW,
    GalleryIndexError,
    IndexMissingError,
    IndexStaleError,
    TemplateIndex,
    as_unit_vectors,
)
from .store import Identity, TemplateInfo, TemplateOrigin, TemplateStore

logger = logging.getLogger(__name__)

STORE_FILE = "gallery.db"
INDEX_FILE = "gallery.index"
#: Templates fetched per query before they are grouped by identity.
SEARCH_DEPTH = 10

_openmp = threading.local()


def _one_openmp_thread() -> None:
    """Give Faiss one OpenMP thread in the calling thread (once per thread).

    OpenMP's thread count is a per-thread setting: set where the gallery is opened, it does not hold
    in another thread that searches. One query at a time gains nothing from a team of threads
    (measured 3× slower with two at 100 000 templates), and waking one costs milliseconds when the
    cores are busy with inference: a search right after the embedder's run took 21 ms with two
    threads against 0.06 ms with one on the 2-core development machine.
    """
    if not getattr(_openmp, "single", False):
        faiss.omp_set_num_threads(1)
        _openmp.single = True


@dataclass(frozen=True)
class ImportReport:
    """What :meth:`Gallery.import_identities` did, per identity id."""

    imported: List[str]
    replaced: List[str]
    skipped: Dict[str, str]
    #: Access groups and holiday calendars defined (``group:NAME``, ``calendar:NAME``), and those kept
    #: because the gallery defines them already (without ``replace``).
    tables_defined: List[str] = field(default_factory=list)
    tables_kept: List[str] = field(default_factory=list)


class Gallery:
    """Store + index for one embedder version. Thread-safe; :meth:`close` is idempotent.

    Args:
        store: the opened template store.
        model_version: the active embedder's ``name@version``.
        dim: its embedding length.
        index_path: where the derived index is saved (its delta beside it).
        compact_ratio, compact_min_bytes: when the delta is folded into a new snapshot
            (:class:`.delta.SavedIndex`); ``compact_ratio`` 0 rewrites the whole file at every change.
        prefilter_above: from this many templates an exact index searches through a prefilter
            (:mod:`.prefilter`), built on a thread of its own.
    """

    def __init__(
        self,
        store: TemplateStore,
        model_version: str,
        dim: int,
        index_path: Path,
        approximate_above: int = 200_000,
        ef_search: int = DEFAULT_EF_SEARCH,
        precision: str = FLOAT16,
        persist_index: bool = True,
        *,
        compact_ratio: float = DEFAULT_COMPACT_RATIO,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
        prefilter_above: int = DEFAULT_PREFILTER_ABOVE,
    ) -> None:
        self.store = store
        self.model_version = model_version
        self.dim = dim
        self.index_path = index_path
        self._approximate_above = approximate_above
        self._prefilter_above = prefilter_above
        self._ef_search = ef_search
        self._precision = precision
        self._persist_index = persist_index
        self._compaction = (compact_ratio, compact_min_bytes)
        self.saved = SavedIndex(index_path, model_version, compact_ratio, compact_min_bytes)
        #: Changes applied with ``save=False``, written by :meth:`save_index` (or at :meth:`close`).
        self._pending: List[DeltaRecord] = []
        self._pending_removal = False
        #: Held by a change from its store transaction to its index files (see the module).
        self._changes = threading.RLock()
        #: Held while ``_index`` and the maps beside it are swapped, edited or searched: briefly.
        self._lock = threading.RLock()
        self._index: Optional[TemplateIndex] = None
        self._closed = False
        #: The store's data version when it was last read whole (see :meth:`changed_elsewhere`).
        self._read_version: Optional[int] = None
        self._owners: Dict[int, str] = {}
        self._names: Dict[str, str] = {}
        #: identity id → (impostor example ids (K,) int64, their (K, D) float32 embeddings) of the
        #: active embedder: "this is not X" (see :meth:`search`).
        self._impostors: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        #: Told, after the change, of each identity whose face was deleted here — removed, its face
        #: forgotten, a fleet tombstone or a record without crops — so that the faces kept of its
        #: passages go too (:meth:`appliance.sightings.store.SightingStore.forget_identity`).
        self.face_forgotten: Optional[Callable[[str], None]] = None
        self.refresh()

    @classmethod
    def open(
        cls,
        config: ApplianceConfig,
        model_version: str,
        dim: int,
        compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
    ) -> Gallery:
        """Open the gallery of ``config.storage.dir`` for the active embedder.

        ``compact_min_bytes``: the smallest delta folded into a new snapshot (tests make it 0).

        Raises:
            GalleryKeyError, GalleryStoreError: see :meth:`TemplateStore.open`; GalleryStoreError
                also when the store is missing or empty but the saved index proves it held
                enrolments (:func:`check_store_not_lost`): nothing is created or overwritten then.
        """
        store_path = config.storage.dir / STORE_FILE
        check_store_not_lost(store_path, config.storage.dir / INDEX_FILE, config.gallery_key_file)
        store = TemplateStore.open(store_path, config.gallery_key_file, config.fleet.enabled)
        try:
            return cls(
                store,
                model_version,
                dim,
                config.storage.dir / INDEX_FILE,
                config.gallery.approximate_above,
                config.gallery.hnsw_ef_search,
                config.gallery.index_precision,
                config.gallery.persist_index,
                compact_ratio=config.gallery.index_delta_ratio,
                compact_min_bytes=compact_min_bytes,
                prefilter_above=config.gallery.prefilter_above,
            )
        except BaseException:
            store.close()
            raise

    # -- index ---------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Load the saved index (snapshot and delta) if it matches the store, else rebuild and save it.

        Searches go on with the index in memory while the new one is loaded or built; it replaces
        that one at the end, with its maps, at once."""
        with self._changes:
            # First: what another process commits from here on shows as a change still to read.
            self._read_version = self.store.data_version()
            generation = self.store.generation
            ids, vectors, owners = self.store.embeddings(self.model_version)
            names = self.store.names()
            impostors = self.store.impostor_vectors(self.model_version)
            self._pending, self._pending_removal = [], False
            if not self._persist_index:
                self._forget_index_file()
                index = self._build(ids, vectors)
            else:
                index = self._load_or_rebuild(generation, ids, vectors)
            with self._lock:
                self._owners = dict(zip(ids.tolist(), owners))
                previous, self._index = self._index, index
                self._names, self._impostors = names, impostors
            if previous is not None:
                previous.close()  # a rebuild of the index replaced has nothing left to do
            # A graph this gallery calls for is built on its own thread, the exact index serving
            # meanwhile: one built from the store, or a snapshot saved during such a build; so is
            # a large exact index's prefilter.
            index.prefilter_above = self._prefilter_above
            index.rebuild_if_due(partial(self._rebuilt, index))

    def changing(self) -> ContextManager[Any]:
        """Hold off every other change of this gallery (a removal on its own thread, a re-reading)
        for a sequence of store steps that must see none between them: a model switch's templates
        read, re-embedded, written, and the switch. Reentrant on the holding thread."""
        return self._changes

    def changed_elsewhere(self) -> bool:
        """Whether another process (the command line: an enrolment, a removal, a "not this" mark)
        committed to the store since it was last read whole by :meth:`refresh`. This gallery's own
        changes do not count: they are in memory already. One SQLite pragma, no lock of the gallery's."""
        return self._read_version is not None and self.store.data_version() != self._read_version

    def _load_or_rebuild(self, generation: int, ids: np.ndarray, vectors: np.ndarray) -> TemplateIndex:
        try:
            index = self.saved.load(
                generation,
                approximate_above=self._approximate_above,
                ef_search=self._ef_search,
                precision=self._precision,
            )
            _check_same_ids(index, ids)
        except (GalleryIndexError, OSError) as err:  # OSError: an unreadable file is rebuilt too
            if isinstance(err, IndexStaleError):
                self._check_not_emptied(generation)
            if self.index_path.exists() or not isinstance(err, FileNotFoundError):
                logger.info("rebuilding the gallery index: %s", err)
            index = self._build(ids, vectors)
            self._save_index(index, generation)
        return index

    def _check_not_emptied(self, generation: int) -> None:
        """Before a stale index is replaced: refuse when the store is new but the index is not.

        :func:`check_store_not_lost` catches a vanished store before it is recreated; this catches
        one recreated empty already (by an older firmware, or by opening the store on its own). A
        store at a lower, non-zero generation than its index (a restored backup) is rebuilt from.
        """
        try:
            saved = saved_generation(self.index_path)
        except (GalleryIndexError, OSError):
            return
        if generation == 0 and saved > 0:
            raise GalleryStoreError(_lost_store_message(self.store.path, self.index_path, saved, "is empty"))
        if saved > generation:
            logger.warning(
                "the gallery store %s is at generation %d, older than its index (generation %d): a restored "
                "backup? rebuilding the index from the store",
                self.store.path,
                generation,
                saved,
            )

    def switch_model(self, model_version: str, dim: int) -> None:
        """Search the templates of another embedder version from now on (rebuilds the index)."""
        with self._changes, self._lock:
            self.model_version, self.dim = model_version, dim
            self.saved = SavedIndex(self.index_path, model_version, *self._compaction)
            self.refresh()

    def _forget_index_file(self) -> None:
        """``gallery.persist_index = false``: no plaintext embeddings on disk, not even an old index or delta."""
        self.saved.forget()

    def _save_index(self, index: TemplateIndex, generation: int) -> None:
        """Save the derived index as a new snapshot; a failure (disk full, I/O error) is logged, not raised.

        The store is the truth and already holds the change: the index in memory serves searches,
        and a file left stale is rebuilt from the store at the next start.
        """
        if not self._persist_index:
            return
        try:
            self.saved.save(index, generation)
        except OSError as err:
            self._unsaved(err)

    def _unsaved(self, err: OSError) -> None:
        self.saved.invalidate()
        logger.warning(
            "could not save the gallery index %s (%s); searching with the one in memory, it is rebuilt "
            "from the store at the next start",
            self.index_path,
            err,
        )

    def _persist(self, records: List[DeltaRecord], removal: bool, save: bool) -> None:
        """Write the change just applied to the index (holding ``_changes``): ``records`` (the
        templates it added, one record per store change) appended to the delta, or — after a
        removal — a new snapshot, so no file keeps a removed embedding. ``save=False`` keeps them for
        :meth:`save_index` (or :meth:`close`)."""
        if not self._persist_index or self._index is None:
            return
        self._pending.extend(records)
        self._pending_removal = self._pending_removal or removal
        if save:
            self._flush()

    def _flush(self) -> None:
        """Write the pending changes (nothing when the files are current and none are pending).
        Holding ``_changes``, not ``_lock``: searches go on while the files are written."""
        assert self._index is not None
        records, removal = self._pending, self._pending_removal
        self._pending, self._pending_removal = [], False
        generation = self.store.generation
        try:
            if removal or (not records and self.saved.generation != generation):
                self.saved.save(self._index, generation)
            elif records:
                self.saved.append(self._index, records)
        except OSError as err:
            self._unsaved(err)

    def _record(self, ids: Sequence[int], vectors: Optional[np.ndarray]) -> DeltaRecord:
        """The delta record of the store change just committed (the store bumps its generation once)."""
        generation = self.store.generation
        id_array = np.asarray(ids, np.int64)
        if vectors is None or not len(id_array):
            vectors = np.zeros((0, self.dim), np.float32)
        return DeltaRecord(generation - 1, generation, id_array, vectors)

    def _build(self, ids: np.ndarray, vectors: np.ndarray) -> TemplateIndex:
        if not len(ids):
            vectors = np.zeros((0, self.dim), np.float32)
        return TemplateIndex.build(
            self.dim,
            ids,
            vectors,
            self._approximate_above,
            self._ef_search,
            precision=self._precision,
            graph_later=True,
        )

    def __len__(self) -> int:
        """Templates searchable now (active embedder version)."""
        with self._lock:
            return len(self._index) if self._index is not None else 0

    @property
    def approximate(self) -> bool:
        """Whether search runs on the approximate (HNSW) index, above ``gallery.approximate_above``
        templates: a template's removal then edits the graph, now and then rebuilds it
        (:meth:`TemplateIndex.remove`)."""
        with self._lock:
            return self._index is not None and self._index.kind == HNSW

    # -- queries -------------------------------------------------------------------------------------

    def search(self, embeddings: np.ndarray, identities: int = 2) -> List[List[Candidate]]:
        """Best identities for each embedding.

        Args:
            embeddings: ``(Q, D)`` float32 unit vectors.
            identities: how many distinct identities to return per query (best first).

        Returns:
            Per query, up to ``identities`` :class:`Candidate` (an identity's score is its best
            template's cosine similarity). A candidate whose identity has an impostor example
            ("this is not X") closer to the face than that score carries it in ``impostor``
            (an exact check over that identity's few examples; the decisions do not grant it).
        """
        if identities < 1:
            raise ValueError(f"identities must be ≥ 1, got {identities}")
        embeddings = np.asarray(embeddings, np.float32).reshape(-1, self.dim)
        _one_openmp_thread()
        with self._lock:
            # The owners hold the index's template ids (refresh checks them against the store), but
            # for a change under way: removed ids leave them before the index, added ones join after
            # it (_update_index), and template ids are never reused. Counting them spares a call
            # into Faiss, which costs 20 µs on a cold cache.
            templates = len(self._owners)
            if self._index is None or not templates or not len(embeddings):
                return [[] for _ in range(len(embeddings))]
            scores, ids = self._index.search(embeddings, min(SEARCH_DEPTH, templates))
            owners, names, impostors = self._owners, self._names, self._impostors
        results: List[List[Candidate]] = []
        for query, row_scores, row_ids in zip(embeddings, scores.tolist(), ids.tolist()):
            # Faiss returns each row best first, so an identity's first template is its best and
            # the dict's order is the ranking.
            best: Dict[str, float] = {}
            for score, template_id in zip(row_scores, row_ids):
                owner = owners.get(template_id)
                if owner is not None and owner not in best:
                    best[owner] = score
                    if len(best) == identities:
                        break
            results.append(
                [
                    Candidate(
                        owner, names.get(owner, owner), score, _impostor(impostors, owner, query, score)
                    )
                    for owner, score in best.items()
                ]
            )
        return results

    def identities(self) -> List[Identity]:
        return self.store.identities()

    # -- changes -------------------------------------------------------------------------------------

    def add(
        self,
        identity_id: str,
        name: str,
        embeddings: np.ndarray,
        crops: Optional[np.ndarray] = None,
        qualities: Optional[Sequence[float]] = None,
        external_id: Optional[str] = None,
        consent_at: Optional[str] = None,
        policy: Optional[IdentityPolicy] = None,
    ) -> List[int]:
        """Store templates of the active embedder for an identity (created if new, with ``policy``), then reindex."""
        with self._changes:
            ids = self.store.add(
                identity_id,
                name,
                self.model_version,
                embeddings,
                crops,
                qualities,
                external_id,
                consent_at,
                policy=policy,
            )
            if self._index is None:
                self.refresh()
                return ids
            # Extend the live index rather than rebuilding it from the store.
            vectors = as_unit_vectors(embeddings, self.dim)
            self._index.add(np.asarray(ids, np.int64), vectors)
            with self._lock:
                self._owners.update((template_id, identity_id) for template_id in ids)
                self._names[identity_id] = name
            self._persist([self._record(ids, vectors)], removal=False, save=True)
        return ids

    def add_identity(
        self,
        identity_id: str,
        name: str,
        external_id: Optional[str] = None,
        consent_at: Optional[str] = None,
        policy: Optional[IdentityPolicy] = None,
    ) -> None:
        """Create an identity without a face (no template: it passes with its cards and PIN only; see
        :meth:`TemplateStore.add_identity`). Nothing is indexed; its name is known from now on.

        Raises:
            IdentityError: a bad id, name or external id, an id that exists, another identity's card.
        """
        with self._changes:
            self.store.add_identity(identity_id, name, external_id, consent_at, policy)
            if self._index is None:
                self.refresh()
                return
            with self._lock:
                self._names[identity_id] = name
            # No template to index, but the store's generation moved: the delta records it, so the
            # saved index stays current.
            self._persist([self._record([], None)], removal=False, save=True)
        logger.info("gallery: an identity without a face was added")

    def forget_face(self, identity_id: str) -> int:
        """Consent withdrawn: delete an identity's templates (every model version, enrolled and
        adaptive, crops included) and impostor examples for real, and their index entries, keeping
        the identity with its name, cards and PIN (:meth:`TemplateStore.forget_face`). The index
        file is written as a new snapshot, so no removed embedding stays in a file.

        Returns:
            The templates deleted (0, and nothing changed, for an identity without any).

        Raises:
            IdentityError: no such identity.
        """
        with self._changes:
            # The identity's indexed templates, as remove() finds them (IdentityError when unknown).
            gone = [
                info.id
                for info in self.store.template_infos(identity_id)
                if info.model_version == self.model_version
            ]
            generation = self.store.generation
            count = self.store.forget_face(identity_id)
            if self._index is None:
                self.refresh()
            elif self.store.generation != generation:
                with self._lock:  # first: see _update_index
                    for template_id in gone:
                        self._owners.pop(template_id, None)
                    self._impostors.pop(identity_id, None)  # deleted with the templates
                if gone:
                    self._index.remove(np.asarray(gone, np.int64))
                # A new snapshot when indexed templates went (none of them may stay in a file); else a record.
                self._persist([self._record([], None)], removal=bool(gone), save=True)
        logger.info(
            "gallery: an identity's face was forgotten: %d template(s) deleted, its cards and PIN kept", count
        )
        self._tell_forgotten(identity_id)
        return count

    def _tell_forgotten(self, identity_id: str) -> None:
        """:attr:`face_forgotten`, whose failure is logged: the change it follows stands."""
        if self.face_forgotten is None:
            return
        try:
            self.face_forgotten(identity_id)
        except Exception as err:  # the gallery's change is done: say what stays behind
            logger.error(
                "gallery: the faces kept of a removed or forgotten face could not be deleted (%s); they "
                "go when they expire (events.keep_crops_h)",
                err,
            )

    def remove(self, identity_id: str) -> int:
        """Delete an identity, its templates and crops, and its index entries. Returns templates removed."""
        with self._changes:
            # The identity's indexed templates from the store's index by identity: scanning the
            # owners map instead took 5 ms at 10⁵ templates, linear in the gallery.
            gone = [
                info.id
                for info in self.store.template_infos(identity_id)  # IdentityError when unknown
                if info.model_version == self.model_version
            ]
            count = self.store.remove(identity_id)
            if self._index is None:
                self.refresh()
            else:
                with self._lock:  # first: see _update_index
                    for template_id in gone:
                        self._owners.pop(template_id, None)
                    self._names.pop(identity_id, None)
                    self._impostors.pop(identity_id, None)  # deleted with it (ON DELETE CASCADE)
                self._index.remove(np.asarray(gone, np.int64))
                # A new snapshot when templates went (none of them may stay in a file); else a record.
                self._persist([self._record([], None)], removal=bool(gone), save=True)
        logger.info("gallery: an identity and %d template(s) were removed", count)
        self._tell_forgotten(identity_id)
        return count

    def add_adaptive(
        self,
        identity_id: str,
        embedding: np.ndarray,
        crop: Optional[np.ndarray],
        quality: float,
        origin: TemplateOrigin,
        keep: int,
        save: bool = True,
        wait: bool = True,
        embedded_with: Optional[str] = None,
    ) -> Tuple[int, List[int]]:
        """Store one adaptive template of the active embedder (evicting the identity's oldest adaptive
        ones beyond ``keep``, see :meth:`TemplateStore.add_adaptive`) and update the index in memory.

        Args:
            embedding: ``(D,)`` float32 unit vector; ``crop``: ``(112, 112, 3)`` uint8 or ``None``.
            save: write the index file now; the daemon passes ``False`` so a passage costs one store
                transaction and no index write — the change is written with the next enrolment or
                removal, or at close (after a crash the stale index is rebuilt from the store).
            wait: ``False`` to refuse rather than wait while another change is in progress (its store
                transaction or its index files): the daemon's ``gallery-change`` thread, which
                learns, must not hold the commands queued behind it for a template.
            embedded_with: the ``name@version`` that made ``embedding``, when it was made on another
                thread than this call's: checked under the change lock, against a model switch that
                came in between.

        Returns:
            ``(the new template id, the template ids evicted)``.

        Raises:
            GalleryBusyError: with ``wait=False``, the gallery was busy; nothing was stored.
            StaleEmbeddingError: ``embedded_with`` is not the gallery's model now; nothing was stored.
        """
        vectors = np.asarray(embedding, np.float32).reshape(1, -1)
        if not self._changes.acquire(blocking=wait):
            raise GalleryBusyError(
                "the gallery is busy with another change (its store transaction or its index files); "
                "the template was not added"
            )
        try:
            if embedded_with is not None and embedded_with != self.model_version:
                raise StaleEmbeddingError(
                    f"an adaptive template of {identity_id!r} embedded with {embedded_with}, but the gallery "
                    f"now holds {self.model_version} templates (a model switch came in between)"
                )
            added, evicted = self.store.add_adaptive(
                identity_id, self.model_version, vectors[0], crop, quality, origin, keep
            )
            name = self._names.get(identity_id, identity_id)
            self._update_index(evicted, [added], vectors, identity_id, name, save)
        finally:
            self._changes.release()
        return added, evicted

    def remove_template(self, identity_id: str, template_id: int) -> TemplateInfo:
        """Delete one template (see :meth:`TemplateStore.remove_template`) and its index entry; the
        index file is rewritten as a new snapshot, so the removed embedding is in no file."""
        with self._changes:
            info = self.store.remove_template(identity_id, template_id)
            name = self._names.get(identity_id, identity_id)
            self._update_index([info.id], [], None, identity_id, name, True)
        logger.info("gallery: one %s template was removed", info.origin.kind)
        return info

    def add_impostor(
        self,
        identity_id: str,
        embedding: np.ndarray,
        crop: Optional[np.ndarray],
        source_event: str,
        score: Optional[float],
    ) -> int:
        """Store an impostor example of ``identity_id`` for the active embedder ("this is not X") and
        use it from the next search on. ``embedding``: ``(D,)`` float32 unit vector; ``crop``:
        ``(112, 112, 3)`` uint8. Returns its id.

        Raises:
            IdentityError: no such identity, or the embedding is not of this embedder's length.
        """
        vector = np.asarray(embedding, np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise IdentityError(
                f"an impostor example needs a {self.dim}-value embedding, got {vector.shape[0]}"
            )
        with self._changes:
            impostor_id = self.store.add_impostor(
                identity_id, self.model_version, vector, crop, source_event, score
            )
            impostors = self.store.impostor_vectors(self.model_version)
            with self._lock:
                self._impostors = impostors
        logger.info("gallery: an impostor example was added to an identity")
        return impostor_id

    def remove_impostor(self, impostor_id: int) -> bool:
        """Delete an impostor example (a mark made in error). Returns whether it existed."""
        with self._changes:
            removed = self.store.remove_impostor(impostor_id) is not None
            impostors = self.store.impostor_vectors(self.model_version)
            with self._lock:
                self._impostors = impostors
        return removed

    def apply_fleet_identity(
        self,
        identity_id: str,
        revision: int,
        name: str,
        external_id: Optional[str],
        consent_at: str,
        policy: IdentityPolicy,
        embeddings: np.ndarray,
        crops: np.ndarray,
        qualities: Sequence[float],
        save: bool = True,
        embedded_with: Optional[str] = None,
        look_alikes: Sequence[Tuple[str, float]] = (),
    ) -> None:
        """Store a fleet record's identity (embedded with the active embedder) and update the index.

        A record without crops (N = 0) is an identity without a face: its templates and impostor
        examples are deleted, here too (:meth:`TemplateStore.put_fleet_identity`).

        Args:
            embeddings: ``(N, D)`` float32 unit vectors; ``crops``: ``(N, 112, 112, 3)`` uint8.
            look_alikes: the other identities these embeddings match at the duplicate threshold,
                ``(identity id, score)`` (:meth:`TemplateStore.put_fleet_identity`).
            save: write the index file now (a catch-up saves once at its end: :meth:`save_index`).
            embedded_with: the ``name@version`` that made ``embeddings``, when they were made on
                another thread than this call's: checked under the change lock, against a model
                switch that came in between.

        Raises:
            StaleEmbeddingError: ``embedded_with`` is not the gallery's model now; nothing changed.
        """
        with self._changes:
            if embedded_with is not None and embedded_with != self.model_version:
                raise StaleEmbeddingError(
                    f"identity {identity_id!r}: embedded with {embedded_with}, but the gallery now holds "
                    f"{self.model_version} templates (a model switch came in between); embed it again"
                )
            removed, added = self.store.put_fleet_identity(
                identity_id,
                revision,
                name,
                external_id,
                consent_at,
                policy,
                self.model_version,
                embeddings,
                crops,
                qualities,
                look_alikes,
            )
            self._update_index(removed, added, embeddings, identity_id, name, save)
            if not len(crops):
                with self._lock:  # after the owners let go of its templates (_update_index)
                    self._impostors.pop(identity_id, None)
        if not len(crops):
            self._tell_forgotten(identity_id)

    def remove_fleet_identity(self, identity_id: str, revision: int, save: bool = True) -> int:
        """Apply a fleet tombstone (deleted for real, as :meth:`remove`). Returns the templates removed."""
        with self._changes:
            removed = self.store.remove_fleet_identity(identity_id, revision)
            self._update_index(removed, [], None, identity_id, None, save)
        self._tell_forgotten(identity_id)
        return len(removed)

    def _update_index(
        self,
        removed: Sequence[int],
        added: Sequence[int],
        embeddings: Optional[np.ndarray],
        identity_id: str,
        name: Optional[str],
        save: bool,
    ) -> None:
        """Apply a store change (just committed, holding ``_changes``) to the index in memory, then
        to its files.

        A search holds ``_lock`` but not ``_changes``, and reports a template only through the
        owners map: so removed templates leave the owners *before* the index (whose removal may
        rebuild an HNSW graph for minutes, searched meanwhile), and added ones join them *after* it.
        A search in between skips them: a revoked person is not granted from the moment the
        owners let go, whatever the index still holds.
        """
        if self._index is None:
            self.refresh()
            return
        with self._lock:
            for template_id in removed:
                self._owners.pop(template_id, None)
            if name is None:
                self._names.pop(identity_id, None)
                self._impostors.pop(identity_id, None)  # a tombstone deleted them with the identity
        if removed:
            self._index.remove(np.asarray(removed, np.int64))
        vectors: Optional[np.ndarray] = None
        if added and embeddings is not None:
            vectors = as_unit_vectors(embeddings, self.dim)
            self._index.add(np.asarray(added, np.int64), vectors)
        with self._lock:
            if vectors is not None:
                self._owners.update((template_id, identity_id) for template_id in added)
            if name is not None:
                self._names[identity_id] = name
        record = self._record(added if vectors is not None else [], vectors)
        self._persist([record], removal=bool(removed), save=save)

    def save_index(self) -> None:
        """Write the changes applied with ``save=False`` now: appended to the delta, or a new
        snapshot when one of them removed templates (or the files are not current)."""
        with self._changes:
            if self._index is not None and self._persist_index:
                self._flush()

    def export(self, passphrase: str) -> bytes:
        """An encrypted bundle of every identity (see :mod:`.bundle`)."""
        return export_bundle(self.store, passphrase)

    def import_bundle(self, data: bytes, passphrase: str, replace: bool = False) -> ImportReport:
        """Import a bundle; existing identities are skipped unless ``replace``.

        Each identity is one transaction: an interrupted import leaves whole identities only.

        Raises:
            BundleError: the bundle does not open or does not validate (nothing is imported).
        """
        bundle = open_bundle(data, passphrase)
        report = self.import_identities(bundle.identities, replace)
        defined, kept = self._import_tables(bundle, replace)
        return replace_fields(report, tables_defined=defined, tables_kept=kept)

    def _import_tables(self, bundle: Bundle, replace: bool) -> Tuple[List[str], List[str]]:
        """Define the bundle's access groups and calendars; existing ones are kept unless ``replace``."""
        defined: List[str] = []
        kept: List[str] = []
        existing = self.store.policy_tables()
        for name, group in bundle.tables.groups.items():
            if name in existing.groups and not replace:
                kept.append(f"group:{name}")
                continue
            self.store.put_group(group)
            defined.append(f"group:{name}")
        for name, calendar in bundle.tables.calendars.items():
            if name in existing.calendars and not replace:
                kept.append(f"calendar:{name}")
                continue
            self.store.put_calendar(calendar)
            defined.append(f"calendar:{name}")
        return defined, kept

    def import_identities(self, identities: Sequence[BundleIdentity], replace: bool = False) -> ImportReport:
        """Import validated identities (from :func:`.bundle.read_bundle`), with their access policy.

        Raises:
            BundleError: a template's length differs from what the gallery holds for its model
                version (checked before anything is written: nothing is imported).
        """
        imported: List[str] = []
        replaced: List[str] = []
        skipped: Dict[str, str] = {}
        with self._changes:
            self._check_lengths(identities)
            existing = {identity.id for identity in self.store.identities()}
            for identity in identities:
                by_version: Dict[str, list] = {}
                for template in identity.templates:
                    by_version.setdefault(template.model_version, []).append(template)
                try:
                    if identity.id in existing:
                        if not replace:
                            skipped[identity.id] = "already in the gallery (use --replace)"
                            continue
                        self.store.remove(identity.id)  # refused for a fleet identity
                        replaced.append(identity.id)
                    if not by_version:  # an identity without a face: its policy only
                        self.store.add_identity(
                            identity.id,
                            identity.name,
                            identity.external_id,
                            identity.consent_at,
                            identity.policy,
                        )
                    for version, templates in by_version.items():
                        dims = {t.embedding.shape[0] for t in templates}
                        if len(dims) != 1:
                            raise IdentityError(f"templates of {version} have several lengths {sorted(dims)}")
                        crops = [t.crop for t in templates]
                        self.store.add(
                            identity.id,
                            identity.name,
                            version,
                            np.stack([t.embedding for t in templates]),
                            np.stack(crops) if all(c is not None for c in crops) else None,  # type: ignore[arg-type]
                            [t.quality if t.quality is not None else 0.0 for t in templates],
                            identity.external_id,
                            identity.consent_at,
                            policy=identity.policy,
                        )
                except IdentityError as err:
                    skipped[identity.id] = str(err)
                    continue
                if identity.id not in replaced:
                    imported.append(identity.id)
            self.refresh()
        return ImportReport(imported, replaced, skipped)

    def _check_lengths(self, identities: Sequence[BundleIdentity]) -> None:
        """Refuse templates whose length is not the gallery's for their model version.

        Without this, one bundle could put 96-long and 128-long embeddings of one version into the
        store: the index could then never be built again, and the daemon would not start.
        """
        expected: Dict[str, int] = {}
        for version, lengths in self.store.embedding_lengths().items():
            if len(lengths) == 1:
                expected[version] = next(iter(lengths))
        expected[self.model_version] = self.dim
        for identity in identities:
            for template in identity.templates:
                length = int(template.embedding.shape[0])
                wanted = expected.setdefault(template.model_version, length)
                if length != wanted:
                    raise BundleError(
                        f"identity {identity.id!r}: a template of {template.model_version} has {length} values "
                        f"where this gallery's have {wanted} (a bundle from another model?); nothing was imported"
                    )

    def wait_rebuilt(self, timeout: Optional[float] = None) -> bool:
        """Wait until no rebuild of the index is under way on its own thread (growth past
        ``gallery.approximate_above``, removals past the detached share; see
        :meth:`.index.TemplateIndex.add`) and its snapshot is saved; returns whether none is."""
        index = self._index
        return index is None or index.wait_rebuilt(timeout)

    def _rebuilt(self, index: TemplateIndex) -> None:
        """On ``index``'s rebuild thread, once the graph built there is in use: save it as a new
        snapshot, so that the next start loads it instead of building it again (unless the gallery
        has closed, or replaced that index meanwhile)."""
        with self._changes:
            if not self._closed and self._index is index:
                self._persist([], removal=True, save=True)

    def close(self, rebuild_stop_s: Optional[float] = None) -> None:
        """Write changes still pending (``save=False``) and close the store. Safe to call more than once.

        A rebuild of the index under way on its own thread (:meth:`TemplateIndex.add
        <.index.TemplateIndex.add>`, :meth:`~.index.TemplateIndex.remove`) is first let finish and
        saved (``rebuild_stop_s`` None: the command line, whose change is then complete), or
        stopped, waiting up to ``rebuild_stop_s`` seconds for its thread (the daemon's stop, within
        its deadline; the next start builds it again). A prefilter being built (:mod:`.prefilter`:
        a second or two) is dropped, its thread waited for as long (None) or as the rebuild's.
        """
        index = self._index
        if index is not None:  # before taking _changes, which the rebuild's save takes
            if rebuild_stop_s is None:
                self.wait_rebuilt()
            if not index.close(rebuild_stop_s):
                logger.warning(
                    "the gallery index's rebuild or prefilter build did not stop within %.1f s",
                    rebuild_stop_s,
                )
        with self._changes:
            self._closed = True
            if self._index is not None and (self._pending or self._pending_removal):
                self._flush()
            self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _impostor(
    impostors: Dict[str, Tuple[np.ndarray, np.ndarray]], owner: str, query: np.ndarray, score: float
) -> Optional[Tuple[int, float]]:
    """``(impostor example id, cosine)`` of ``owner``'s example nearest to ``query`` ((D,) float32) when
    it is closer than ``score`` (the identity's best template), else ``None``."""
    examples = impostors.get(owner)
    if examples is None:
        return None
    ids, vectors = examples
    similarities = vectors @ query
    nearest = int(np.argmax(similarities))
    if float(similarities[nearest]) <= score:
        return None
    return int(ids[nearest]), float(similarities[nearest])


def _check_same_ids(index: TemplateIndex, ids: np.ndarray) -> None:
    """Refuse a saved index whose template ids are not exactly the store's (``ids``: (n,) int64)."""
    held = index.ids()
    if held.shape[0] != ids.shape[0]:
        raise GalleryIndexError(f"index holds {held.shape[0]} templates, the store {ids.shape[0]}")
    if not np.array_equal(np.sort(held), np.sort(np.asarray(ids, np.int64))):
        raise GalleryIndexError(f"index holds {held.shape[0]} templates, as the store, but not the same ones")


def _store_missing(store_path: Path) -> Optional[str]:
    """``"is missing"`` / ``"is empty"`` when there is no database to open at ``store_path``, else ``None``."""
    try:
        size = store_path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    except OSError:
        return None  # unreadable: TemplateStore.open says why
    return "is empty (0 bytes)" if size == 0 else None


def check_store_not_lost(store_path: Path, index_path: Path, key_file: Path) -> None:
    """Refuse to create a new, empty store where the saved index proves one held enrolments.

    A first start (no store and no index, with or without a key) passes, and so does an index saved
    at generation 0 (a gallery that never held anyone). An index file whose header cannot be read
    is evidence too: only a gallery writes one.

    Raises:
        GalleryStoreError: the store is missing or empty and the index is not (the message says how
            to restore it, or how to really start again).
    """
    missing = _store_missing(store_path)
    if missing is None:
        return
    try:
        saved: Optional[int] = saved_generation(index_path)
    except IndexMissingError:
        return
    except (GalleryIndexError, OSError) as err:
        logger.debug("the gallery index %s cannot be read: %s", index_path, err)
        saved = None
    if saved == 0:
        return
    key = f" and its key {key_file} is still there" if key_file.exists() else ""
    raise GalleryStoreError(_lost_store_message(store_path, index_path, saved, missing, key))


def _lost_store_message(
    store_path: Path, index_path: Path, saved: Optional[int], missing: str, key_note: str = ""
) -> str:
    """What was found (store, index, key), what is refused, and what to do."""
    found = (
        f"the search index {index_path} was saved at generation {saved}"
        if saved is not None
        else f"a search index {index_path} exists (its header cannot be read)"
    )
    return (
        f"the gallery database {store_path} {missing}, but {found}{key_note}: the gallery held enrolments. Refusing to "
        f"start with an empty gallery, which would deny every enrolled person and overwrite the index. Restore "
        f"{store_path.name} from its backup; to really start with no one enrolled, move {index_path.name} "
        f"away (and the empty {store_path.name}, if any)"
    )
