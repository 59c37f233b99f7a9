"""Remote commands (``…/cmd/{name}``) and reload, carried out in order, between two frames.

:meth:`CommandService.receive` is called from paho's network thread: it validates the command and
queues it (a full queue or a malformed command is answered at once, never dropped silently).
:meth:`CommandService.run_pending` runs on the pipeline thread between two frames, so commands use
the live models and the gallery without racing the frames. Every command gets one answer on
``…/cmd/{name}/result``.

The removals (``remove``, ``remove_template``, ``forget_face``) need no model but write a new index snapshot, so that
no file keeps the removed face: 26 MB at 10⁵ templates, 536 MB for an HNSW graph of 10⁶ — tens of
milliseconds to seconds of disk. They run on the ``gallery-change`` thread
(:mod:`appliance.change_thread`), and the pipeline goes on with its frames and its searches meanwhile.
The commands after one wait until it is answered, so every command still sees the ones before it
done; a reload waits too (:meth:`CommandService.busy`), and so they wait for an adaptive template
being stored there (:mod:`appliance.template_update`).

The same thread reads the gallery again when another process changed its store — the command line's
``gallery remove``, ``enroll``, ``templates --remove``, ``not-this`` while the daemon runs —
checked every :data:`STORE_WATCH_S` between two frames (:meth:`CommandService.watch_store`): such a
change takes effect within seconds, without a reload, and the frames go on with the index in memory
until the new one replaces it.
"""

from __future__ import annotations

import functools
import logging
import queue
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .access.area import AreaFeed
from .access.errors import PolicyError
from .access.judge import AccessJudge
from .access.learning import CredentialLearning
from .access.passback import forget_removed, forget_when_off, presence_document
from .access.presence import PresenceError, PresenceStore
from .change_thread import ChangeThread
from .commands import (
    AccessCommand,
    CommandError,
    DistinctCommand,
    DoorModeCommand,
    DoorOpenCommand,
    EnrollCommand,
    ForgetFaceCommand,
    LearnCardCommand,
    LearnPinCommand,
    NotThisCommand,
    PresenceCommand,
    PresenceResetCommand,
    ReloadCommand,
    RemoveCalendarCommand,
    RemoveCommand,
    RemoveGroupCommand,
    RemoveTemplateCommand,
    SetCalendarCommand,
    SetGroupCommand,
    SetPolicyCommand,
    SetThresholdCommand,
    StatusCommand,
    TemplatesCommand,
    failure,
    parse,
    result,
)
from .config import ApplianceConfig
from .config_load import load_config
from .enrollment import Enroller
from .pipeline import Outcome, Pipeline
from .runtime import ModelRuntime
from .sightings.store import SightingStore
from .template_update import TemplateUpdater
from .vision.image import ImageError, decode_image

logger = logging.getLogger(__name__)

#: Commands waiting for the pipeline thread at most; more are answered "busy".
MAX_QUEUED = 100

#: Commands carried out on their own thread: they need no model, and write the index's snapshot.
OFF_THE_PIPELINE = (RemoveCommand, RemoveTemplateCommand, ForgetFaceCommand)
#: What :meth:`CommandService.execute` returns for a command answered later (``learn_card``).
ANSWERED_LATER: Dict[str, Any] = {}

#: How often, at most, the pipeline asks whether another process changed the gallery's store (s).
STORE_WATCH_S = 2.0

#: ``answer(command name, result document)``: publish a command's answer (never raises).
Answer = Callable[[str, Dict[str, Any]], None]


class CommandService:
    """Queues remote commands and carries them out on the pipeline thread.

    Args:
        config: the live configuration (reload changes its thresholds in place).
        config_path: the file to re-read on reload, if any.
        runtime: the models and the gallery (owner: the pipeline thread).
        pipeline: the per-frame pipeline (its threshold).
        answer: publishes an answer.
        state: the ``…/state`` document, for ``status``.
        reloading, reloaded: systemd's RELOADING=1 / READY=1 around a reload.
        sightings: the store of kept faces (``events.keep_crops_h``), for ``not_this``; ``None`` when off.
        templates: the template update (``[adaptive]``), whose rules a reload replaces; ``None`` when off.
        changes: the ``gallery-change`` thread, shared with the template update (a new one if ``None``).
    """

    def __init__(
        self,
        config: ApplianceConfig,
        config_path: Optional[Path],
        runtime: ModelRuntime,
        pipeline: Pipeline,
        answer: Answer,
        state: Callable[[], Dict[str, Any]],
        reloading: Callable[[], Any] = lambda: None,
        reloaded: Callable[[], Any] = lambda: None,
        sightings: Optional[SightingStore] = None,
        templates: Optional[TemplateUpdater] = None,
        changes: Optional[ChangeThread] = None,
        presence: Optional[PresenceStore] = None,
        doors: Sequence[Any] = (),
        area: Optional[AreaFeed] = None,
    ) -> None:
        #: The other doors' passages (anti-passback across an area), applied between frames.
        self.area = area
        #: The doors' own I/O (:class:`appliance.door.controller.DoorController`) that run, by id.
        self.doors: Dict[str, Any] = {door.name: door for door in doors}
        self._presence_generation: Optional[int] = None
        self._calendars_seen: Optional[Tuple[int, int]] = None
        self.sightings = sightings
        #: The identities' last passages (anti-passback), when a camera has a direction.
        self.presence = presence
        self.templates = templates
        self.config = config
        self.config_path = config_path
        self.runtime = runtime
        self.pipeline = pipeline
        self._answer = answer
        self._state = state
        self._reloading = reloading
        self._reloaded = reloaded
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_QUEUED)  # of (name, request id, command)
        #: Where removals and readings of the gallery run, off the pipeline thread (see the module).
        self.changes = changes if changes is not None else ChangeThread()
        #: A ``learn_card`` or ``learn_pin`` waiting for the card or PIN to come to the reader.
        self.learning = CredentialLearning(self._answer_later)
        self._watched_at = float("-inf")

    # -- paho's thread ----------------------------------------------------------------------------------

    def receive(self, name: str, payload: bytes) -> None:
        """Validate and queue a command (called from paho's thread)."""
        try:
            request_id, command = parse(name, payload, self.config.commands.max_age_s)
        except CommandError as err:
            self._answer(name, failure(err.request_id, err.code, str(err)))
            return
        try:
            self._queue.put_nowait((name, request_id, command))
        except queue.Full:
            self._answer(name, failure(request_id, "busy", "too many commands waiting; try again"))

    # -- the pipeline thread ----------------------------------------------------------------------------

    def busy(self) -> bool:
        """Whether a removal, a reading of the gallery or an adaptive template is under way off the
        pipeline thread (the next commands wait for it)."""
        return self.changes.busy()

    def run_pending(self) -> int:
        """Carry out the queued commands in order, answering each; a removal is handed to its own
        thread, and the commands after it stay queued until it is answered. Returns how many were
        taken from the queue."""
        taken = 0
        while not self.busy():
            try:
                name, request_id, command = self._queue.get_nowait()
            except queue.Empty:
                break
            taken += 1
            if isinstance(command, OFF_THE_PIPELINE):
                if not self.changes.start(self._carry_out, name, request_id, command):  # closed
                    self._answer(name, failure(request_id, "busy", "the appliance is stopping; try again"))
                break
            self._carry_out(name, request_id, command)
        return taken

    def watch_store(self, now: Optional[float] = None) -> bool:
        """Between two frames: when another process changed the gallery's store, read the gallery
        again on the ``gallery-change`` thread (see the module). Asks at most every
        :data:`STORE_WATCH_S`, and not while a removal or a reading is under way. Returns whether a
        reading started."""
        now = time.monotonic() if now is None else now
        if now - self._watched_at < STORE_WATCH_S or self.busy():  # every frame: the cheap test first
            return False
        self._watched_at = now
        gallery = self.runtime.gallery
        if gallery is None:
            return False
        self._forget_removed(gallery.store)
        self._share_closed_days(gallery.store)
        if not gallery.changed_elsewhere():
            return False
        return self.changes.start(self._read_again, gallery)

    def take_area_passages(self) -> int:
        """Between two frames: record the passages granted at the area's other doors
        (:class:`appliance.access.area.AreaFeed`); returns how many were taken."""
        if self.area is None:  # every frame: the cheap test first
            return 0
        gallery = self.runtime.gallery
        if gallery is None:
            return 0
        judge = self.pipeline.judge
        passback = judge.passback if judge is not None else None
        store = gallery.store
        return self.area.apply(
            passback.store if passback is not None else None,
            lambda identity_id: store.identity(identity_id) is not None,
        )

    def take_credentials(self, now: float) -> List[Outcome]:
        """Between two frames: the cards and PINs from the readers — what a ``learn_card`` or
        ``learn_pin`` waits for is learned, the rest go to the held face grants and the passages without a face
        (:meth:`Pipeline.present_credentials`)."""
        inbox = self.pipeline.credentials
        if inbox is None:  # every frame: the cheap test first
            return []
        presented = inbox.drain()
        if self.learning.armed is not None:
            gallery = self.runtime.gallery
            if gallery is not None:
                presented = self.learning.take(presented, gallery.store, time.time())
        return self.pipeline.present_credentials(presented, now) if presented else []

    def stop_learning(self) -> None:
        """At the stop: a ``learn_card`` or ``learn_pin`` still waiting is answered."""
        self.learning.abandon("the appliance is stopping; send the learning again once it is back")

    def _answer_later(
        self, name: str, request_id: Optional[str], outcome: Optional[Dict[str, Any]], error: Optional[Any]
    ) -> None:
        if error is not None:
            self._answer(name, failure(request_id, error[0], error[1]))
        else:
            self._answer(name, result(request_id, outcome))

    def _share_closed_days(self, store: Any) -> None:
        """Each door's unlock windows stay shut on the days of its ``unlock.holidays``: read from the
        gallery's calendars whenever they may have changed (this process's commits — a
        ``set_calendar`` — or another's, by SQLite's data version) and handed to the door's thread."""
        doors = [door for door in self.doors.values() if door.config.unlock.holidays]
        if not doors:
            return
        mark = store.change_mark()
        if mark == self._calendars_seen:
            return
        self._calendars_seen = mark
        tables = store.policy_tables()
        for door in doors:
            door.set_closed_days(tables.days_of(door.config.unlock.holidays))

    def _forget_removed(self, store: Any) -> None:
        """Anti-passback keeps nothing of a removed person: once the gallery's generation has moved
        (a ``remove``, ``gallery remove`` beside the daemon, a fleet removal), the passages of the
        identities it no longer holds are deleted."""
        if self.presence is None:
            return
        generation = store.generation
        if generation == self._presence_generation:
            return
        try:
            forget_removed(self.presence, store.names().__contains__)
        except PresenceError as err:
            logger.warning("anti-passback: the passages of removed identities stay for now: %s", err)
            return
        self._presence_generation = generation

    @staticmethod
    def _read_again(gallery: Any) -> None:
        try:
            gallery.refresh()
        except Exception:
            logger.exception(
                "the gallery's store was changed by another process, and reading it again failed; "
                "searching with the gallery in memory until the next change or reload"
            )
        else:
            logger.info(
                "the gallery's store was changed by another process (the command line?): read again, "
                "%d templates",
                len(gallery),
            )

    def _carry_out(self, name: str, request_id: Optional[str], command: object) -> None:
        try:
            outcome = self.execute(command)
        except CommandError as err:
            self._answer(name, failure(request_id, err.code, str(err)))
        except Exception as err:
            logger.exception("command %s failed", name)
            self._answer(name, failure(request_id, "failed", f"{type(err).__name__}: {err}"))
        else:
            if outcome is not ANSWERED_LATER:
                self._answer(name, result(request_id, outcome))

    def execute(self, command: object) -> Dict[str, Any]:
        """Carry out one validated command and return its result document."""
        gallery = self.runtime.gallery
        if gallery is None:
            raise CommandError("not ready", "busy")
        if isinstance(command, StatusCommand):
            return self._state()
        if isinstance(command, SetThresholdCommand):
            old = self.pipeline.settings.threshold
            self.pipeline.set_threshold(command.threshold)
            logger.info("match threshold changed from %.3f to %.3f by command", old, command.threshold)
            return {"old": old, "threshold": command.threshold}
        if isinstance(command, ReloadCommand):
            return self.reload()
        if isinstance(command, RemoveCommand):
            from .gallery.errors import IdentityError

            try:
                removed = gallery.remove(command.id)
            except IdentityError as err:
                raise CommandError(str(err)) from None
            return {"id": command.id, "templates_removed": removed}
        if isinstance(command, ForgetFaceCommand):
            from .gallery.errors import IdentityError

            try:
                removed = gallery.forget_face(command.id)
            except IdentityError as err:
                raise CommandError(str(err)) from None
            return {"id": command.id, "removed": removed}
        if isinstance(command, (TemplatesCommand, RemoveTemplateCommand)):
            return self._templates(command, gallery)
        if isinstance(command, EnrollCommand):
            return self._enroll(command)
        if isinstance(command, NotThisCommand):
            return self._not_this(command)
        if isinstance(command, DistinctCommand):
            return self._distinct(command, gallery.store)
        if isinstance(command, (PresenceCommand, PresenceResetCommand)):
            return self._presence(command, gallery.store)
        if isinstance(command, (DoorOpenCommand, DoorModeCommand)):
            return self._door(command)
        if isinstance(command, LearnCardCommand):  # and LearnPinCommand
            return self._learn(command, gallery.store)
        return self._access(command, gallery.store)

    def _learn(self, command: LearnCardCommand, store: Any) -> Dict[str, Any]:
        """``learn_card`` and ``learn_pin``: armed here, answered when the card or the PIN typed twice
        comes (:mod:`.access.learning`); with ``for_fleet``, for the site's authority (nothing stored
        here, the PIN's hash answered sealed)."""
        readers = self.config.reader_cameras
        if self.pipeline.credentials is None or not readers:
            raise CommandError("no card reader here: describe it in [credential_reader]", "invalid")
        if command.reader is not None and command.reader not in readers:
            raise CommandError(
                f"no card reader {command.reader!r}; the readers: {', '.join(readers)}", "invalid"
            )
        if store.identity(command.id) is None:
            raise CommandError(f"no identity {command.id!r}")
        if isinstance(command, LearnPinCommand):
            name, what = "learn_pin", "duress_pin" if command.duress else "pin"
        else:
            name, what = "learn_card", "card"
        seal: Optional[Callable[[str], str]] = None
        if command.for_fleet:
            seal = self._fleet_seal(command, store, what)
        else:
            from .gallery.errors import IdentityError

            try:  # checked again when the credential comes
                store.check_local_change(command.id, "policy")
            except IdentityError as err:
                raise CommandError(str(err)) from None
        until = time.time() + command.within_s
        if not self.learning.arm(
            command.id, name, command.request_id, command.reader, until, what, command.for_fleet, seal
        ):
            raise CommandError(
                f"a card or PIN is being learned for {self.learning.armed!r}; try again once it is answered",
                "busy",
            )
        return ANSWERED_LATER

    def _fleet_seal(self, command: LearnCardCommand, store: Any, what: str) -> Optional[Callable[[str], str]]:
        """For a learning ``for_fleet``: what seals a PIN hash for the authority (``None`` for a card).

        Raises:
            CommandError: this door is in no fleet, the identity was enrolled here, or the fleet key
                cannot be read.
        """
        fleet = self.config.fleet
        if not fleet.enabled:
            raise CommandError(
                "for_fleet: this door takes part in no fleet ([fleet] enabled = false)", "invalid"
            )
        if store.fleet_revision(command.id) is None:
            raise CommandError(
                f"for_fleet: identity {command.id!r} was enrolled at this door, not by the fleet; learn "
                "without for_fleet"
            )
        if what == "card":
            return None
        from .fleet.errors import FleetError
        from .fleet.records import read_fleet_key
        from .fleet.sealed_pin import seal_pin_hash

        try:
            fleet_key = read_fleet_key(fleet.fleet_key_file)
        except FleetError as err:
            raise CommandError(f"for_fleet: {err}", "failed") from None
        return functools.partial(seal_pin_hash, fleet_key, fleet.site, command.id, command.request_id, what)

    def _door(self, command: Union[DoorOpenCommand, DoorModeCommand]) -> Dict[str, Any]:
        """``door_open`` and ``door_mode``: handed to the named door's owner thread (the only one's
        when ``door`` is left out), which reports what it did as door events (``remote_open``,
        ``door_unlocked``, ``door_locked``)."""
        if not self.doors:
            raise CommandError(
                "this appliance drives no door: [door] is not enabled, or it could not start (see …/state "
                "degraded)"
            )
        if command.door is None and len(self.doors) > 1:
            raise CommandError(
                f"this appliance drives {len(self.doors)} doors: name one with door ({self._door_ids()})"
            )
        door = self.doors.get(command.door) if command.door is not None else next(iter(self.doors.values()))
        if door is None:
            raise CommandError(f"no door {command.door!r} runs here (doors: {self._door_ids()})")
        if isinstance(command, DoorOpenCommand):
            door.remote_open(command.request_id)
            logger.info("door %s: remote open by command %s", door.name, command.request_id)
            return {"door": door.name, "pulse_s": door.config.relay.pulse_s}
        door.set_mode(command.mode, None if command.minutes is None else command.minutes * 60.0)
        return {"door": door.name, "mode": command.mode, "minutes": command.minutes}

    def _door_ids(self) -> str:
        return ", ".join(sorted(self.doors))

    def _presence(self, command: Union[PresenceCommand, PresenceResetCommand], store: Any) -> Dict[str, Any]:
        """``presence`` (anti-passback's state: who passed in or out last) and ``presence_reset``."""
        judge = self.pipeline.judge
        passback = judge.passback if judge is not None else None
        if passback is None:
            raise CommandError(
                "anti-passback is off at this door: [access.anti_passback] mode is 'off' (or no camera "
                "has a direction); nothing is kept about who is in"
            )
        if isinstance(command, PresenceResetCommand):
            forgotten = passback.store.reset(None if command.all else command.ids, forgotten_at=time.time())
            logger.info("anti-passback: a command forgot the last passages of %d identities", forgotten)
            return {"forgotten": forgotten}
        return presence_document(passback, store, command.direction, command.limit)

    @staticmethod
    def _distinct(command: DistinctCommand, store: Any) -> Dict[str, Any]:
        """``distinct``: a look-alike pair with an identity enrolled here marked two people, or not
        (:meth:`appliance.gallery.store.TemplateStore.mark_distinct`); the fleet's digest follows."""
        from .gallery.errors import IdentityError

        first, second = command.ids
        try:
            changed = store.mark_distinct(first, second, distinct=not command.undo)
        except IdentityError as err:
            raise CommandError(str(err)) from None
        return {"ids": sorted(command.ids), "distinct": not command.undo, "changed": changed}

    def _access(self, command: object, store: Any) -> Dict[str, Any]:
        """The access-policy commands: an identity's policy, groups, calendars (see :mod:`.commands`)."""
        from .gallery.errors import IdentityError

        if isinstance(command, SetPolicyCommand):
            identity = store.identity(command.id)
            if identity is None:
                raise CommandError(f"no identity {command.id!r}")
            try:
                policy = identity.policy.changed(command.changes())
            except PolicyError as err:  # e.g. valid_until now before the stored valid_from
                raise CommandError(str(err), "invalid") from None
            try:
                store.set_policy(identity.id, policy)
            except IdentityError as err:  # a card another identity holds
                raise CommandError(str(err)) from None
            logger.info("access policy of an identity changed by command")
            return {"id": identity.id, "policy": policy.public_document()}
        if isinstance(command, SetGroupCommand):
            group = command.group()
            store.put_group(group)
            return group.document()
        if isinstance(command, SetCalendarCommand):
            calendar = command.calendar()
            store.put_calendar(calendar)
            return {"name": calendar.name, "days": len(calendar.days)}
        if isinstance(command, RemoveGroupCommand):
            if not store.remove_group(command.name):
                raise CommandError(f"no group {command.name!r}")
            return {"name": command.name, "removed": True}
        if isinstance(command, RemoveCalendarCommand):
            if not store.remove_calendar(command.name):
                raise CommandError(f"no holiday calendar {command.name!r}")
            return {"name": command.name, "removed": True}
        if isinstance(command, AccessCommand):
            tables = store.policy_tables()
            return {
                "door": self.config.access.door_document(),
                "groups": [group.document() for _, group in sorted(tables.groups.items())],
                "calendars": [calendar.document() for _, calendar in sorted(tables.calendars.items())],
            }
        raise CommandError("unsupported command")

    def _reload_adaptive(self, fresh: ApplianceConfig) -> None:
        if self.templates is not None:
            self.templates.settings = fresh.adaptive
        elif fresh.adaptive.enabled:
            logger.warning(
                "[adaptive] is enabled in the configuration file but was off at the start: "
                "it takes effect at the next start"
            )
            return
        self.config.adaptive = fresh.adaptive

    def _templates(
        self, command: Union[TemplatesCommand, RemoveTemplateCommand], gallery: Any
    ) -> Dict[str, Any]:
        """``templates`` lists an identity's templates; ``remove_template`` deletes one at once (the
        search stops using it before the answer goes out)."""
        from .gallery.errors import IdentityError

        try:
            if isinstance(command, RemoveTemplateCommand):
                info = gallery.remove_template(command.id, command.template_id)
                return {"id": command.id, "removed": info.document()}
            infos = gallery.store.template_infos(command.id)
        except IdentityError as err:
            raise CommandError(str(err)) from None
        return {"id": command.id, "templates": [info.document() for info in infos]}

    def _not_this(self, command: NotThisCommand) -> Dict[str, Any]:
        """``not_this``, "this is not X" (:func:`appliance.sightings.impostors.mark_not`); refusals carry their code."""
        from .sightings.errors import SightingError
        from .sightings.impostors import mark_not

        gallery = self.runtime.gallery
        if gallery is None:
            raise CommandError("not ready", "busy")
        sightings = self.sightings if self.config.events.keep_crops_h > 0 else None
        try:
            return mark_not(
                gallery,
                sightings,
                command.event_id,
                command.id,
                self.runtime.analyzer.embedder.embed,
                self.config.events.keep_crops_h,
            )
        except SightingError as err:
            raise CommandError(str(err), err.code) from None

    def _enroll(self, command: EnrollCommand) -> Dict[str, Any]:
        """``enroll``: from a photo, or with ``event_id`` an unknown visitor's kept face
        (:func:`appliance.sightings.walk_up.enroll_from_event`); refusals carry their code."""
        from .gallery.errors import IdentityError
        from .gallery.store import check_identity_id, slugify, utc_now
        from .sightings.errors import SightingError
        from .sightings.walk_up import enroll_from_event

        gallery = self.runtime.gallery
        if gallery is None:
            raise CommandError("not ready", "busy")
        identity_id = command.id or slugify(command.name)
        consent_at = command.consent_at or utc_now()
        if command.no_face:
            return self._enroll_without_face(command, gallery, identity_id, consent_at)
        try:
            check_identity_id(identity_id)
            enroller = Enroller(self.runtime.analyzer, gallery, self.config.gallery)
            if command.event_id is not None:
                outcome = enroll_from_event(
                    enroller,
                    self.sightings,
                    command.event_id,
                    identity_id,
                    command.name,
                    command.external_id,
                    consent_at,
                    command.policy(),
                )
            else:
                try:
                    image = decode_image(command.image_bytes(), "image")
                except ImageError as err:
                    raise CommandError(str(err), "invalid") from None
                outcome = enroller.enroll(
                    identity_id,
                    command.name,
                    [("image", image)],
                    command.external_id,
                    consent_at,
                    command.face,
                    policy=command.policy(),
                )
        except IdentityError as err:
            raise CommandError(str(err)) from None
        except SightingError as err:
            raise CommandError(str(err), err.code) from None
        photo = outcome.photos[0]
        if not outcome.template_ids:
            if len(outcome.photos) == 1:
                raise CommandError(f"photo refused: {photo.reason}")
            refusals = "; ".join(f"{view.source}: {view.reason}" for view in outcome.photos)
            raise CommandError(f"every view refused: {refusals}")
        answer: Dict[str, Any] = {
            "id": identity_id,
            "templates": len(outcome.template_ids),
            "photo": photo.reason,
            "duplicates": outcome.duplicates,
        }
        if command.event_id is not None:  # the views of the event's face, each with its verdict
            answer["photos"] = [
                {"source": view.source, "accepted": view.accepted, "reason": view.reason}
                for view in outcome.photos
            ]
        return answer

    @staticmethod
    def _enroll_without_face(
        command: EnrollCommand, gallery: Any, identity_id: str, consent_at: str
    ) -> Dict[str, Any]:
        """``enroll`` with ``no_face``: an identity without a face, its policy only (no model)."""
        from .gallery.errors import IdentityError
        from .gallery.store import check_identity_id

        try:
            check_identity_id(identity_id)
        except IdentityError as err:
            raise CommandError(f"id: {err}", "invalid") from None
        try:
            policy = command.policy()
            gallery.add_identity(identity_id, command.name, command.external_id, consent_at, policy)
        except PolicyError as err:
            raise CommandError(str(err), "invalid") from None
        except IdentityError as err:  # a bad or taken id, another identity's card
            raise CommandError(str(err)) from None
        answer: Dict[str, Any] = {"id": identity_id, "templates": 0, "policy": policy.public_document()}
        if not policy.cards:
            answer["warning"] = (
                "no face and no card: they cannot pass until a card is learned (learn_card) or set (set_policy)"
            )
        return answer

    def reload(self) -> Dict[str, Any]:
        """Re-read thresholds, ``[decision]``, ``[access]`` and ``[adaptive]``'s rules from the
        configuration file and the gallery from disk (SIGHUP, ``reload``).

        ``[adaptive]`` can be tightened, loosened or turned off at a reload; turning it on needs a
        restart when it was off at the start (the pipeline keeps no frame to learn from then).

        Runs on the pipeline thread, like every other change to the live models or the gallery.
        """
        self._reloading()
        gallery = self.runtime.gallery
        try:
            if self.config_path is not None:
                fresh = load_config(self.config_path)
                self.config.match.threshold = fresh.match.threshold
                self.config.decision = fresh.decision
                self.config.liveness.threshold = fresh.liveness.threshold
                self.config.access = fresh.access
                self._reload_adaptive(fresh)
                if self.presence is not None:
                    forget_when_off(self.presence, fresh.access.anti_passback.mode)
                elif fresh.access.anti_passback.mode != "off":
                    logger.warning(
                        "anti-passback stays off until a restart: the cameras' directions are read at "
                        "the start, and none had one then"
                    )
                # This door's groups, time zone, anti-passback, second factor, card and PIN without a face
                # and two-person rule, from the next passage on (the cameras and readers started with the daemon).
                if gallery is not None:
                    self.pipeline.judge = AccessJudge.for_appliance(self.config, gallery.store, self.presence)
            self.pipeline.set_threshold(self.config.match.threshold)
            liveness = self.runtime.analyzer.liveness
            if liveness is not None:
                liveness.threshold = self.config.liveness.threshold
            if gallery is not None:
                gallery.refresh()
            logger.info(
                "reloaded: threshold %.3f, %d templates", self.config.match.threshold, len(gallery or [])
            )
        finally:
            self._reloaded()
        return {"threshold": self.config.match.threshold, "templates": len(gallery or [])}


__all__ = ["MAX_QUEUED", "CommandService"]
