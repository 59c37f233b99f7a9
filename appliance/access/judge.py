"""The policy applied to a passage: reads the identity's policy and the groups from the gallery store
at the moment of the decision (a change by command or CLI counts from the next passage), then, at a
camera with a direction, anti-passback (:mod:`appliance.access.passback`), a second factor
(:mod:`appliance.access.second_factor`) and the two-person rule (:mod:`appliance.access.two_person`).
A passage is a recognised face, or a card and PIN of someone without a face
(:mod:`appliance.access.without_face`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, List, Mapping, Optional, Protocol, Sequence, Tuple

from .credentials import PresentedCredential
from .passback import PASSBACK, VIOLATION, AntiPassback
from .policy import AccessPolicy, IdentityPolicy, PolicyTables
from .second_factor import CREDENTIAL_LOCKOUT, SECOND_FACTOR, WRONG_CREDENTIAL, Completion, SecondFactorRule
from .settings import AccessConfig
from .two_person import TWO_PERSON, TwoPersonRule, Waiting
from .without_face import PinMatch, WithoutFaceRule

if TYPE_CHECKING:
    from ..config import ApplianceConfig
    from ..gallery.store import Identity
    from .presence import PresenceStore

logger = logging.getLogger(__name__)

#: ``judge`` answers this when the identity is no longer in the gallery (removed while in view).
GONE = "gone"


class PolicySource(Protocol):
    """Where the policy is read from: :class:`appliance.gallery.store.TemplateStore`."""

    def identity(self, identity_id: str) -> Optional[Identity]: ...

    def card_holders(self, card: str) -> List[Identity]: ...

    def policy_tables(self) -> PolicyTables: ...


@dataclass(frozen=True)
class Verdict:
    """What the door says of one recognised passage.

    Attributes:
        reason: ``None`` (admitted), a reason from :data:`appliance.access.policy.REASONS`, or :data:`GONE`.
        anti_passback: :data:`~appliance.access.passback.VIOLATION` when ``soft`` anti-passback
            admitted a passback, else ``None``.
        companions: the identities whose held grants this one completed (the two-person rule): they
            pass with it.
        factors: what opened: ``("face", "card")`` or ``("face", "pin")`` when a second factor was
            asked, ``("card", "pin")`` or ``("card",)`` without a face; ``()`` for the face alone.
        duress: the PIN was the identity's duress PIN.
    """

    reason: Optional[str] = None
    anti_passback: Optional[str] = None
    companions: Tuple[str, ...] = ()
    factors: Tuple[str, ...] = ()
    duress: bool = False


@dataclass(frozen=True)
class CredentialPassage:
    """What a card or PIN at a reader decided (:meth:`AccessJudge.present`).

    Attributes:
        identity_id: whose passage; ``None`` for a card nobody here holds (an ``unknown`` event).
        camera_id: the camera the passage counts at.
        verdict: the judge's word.
        factors: what was presented without a face, ``("card",)`` or ``("card", "pin")``; ``()`` for
            the held face grant of ``identity_id`` that the credential decided.
        name: the display name of ``identity_id`` without a face.
    """

    identity_id: Optional[str]
    camera_id: str
    verdict: Verdict
    factors: Tuple[str, ...] = ()
    name: Optional[str] = None

    @property
    def faceless(self) -> bool:
        """A passage without a face (:mod:`appliance.access.without_face`)."""
        return bool(self.factors)


class AccessJudge:
    """Judges a recognised identity for this door.

    Args:
        policy: the door's rules (its groups, time zone and clock).
        source: the gallery store.
        passback: anti-passback, when it is on.
        two_person: the two-person rule, when some groups need a companion.
        second_factor: the card or PIN a face must add, when the door asks for one.
        without_face: card (and PIN) for people without a face, when the door lets them in.
    """

    def __init__(
        self,
        policy: AccessPolicy,
        source: PolicySource,
        passback: Optional[AntiPassback] = None,
        two_person: Optional[TwoPersonRule] = None,
        second_factor: Optional[SecondFactorRule] = None,
        without_face: Optional[WithoutFaceRule] = None,
    ) -> None:
        self.policy = policy
        self.source = source
        self.passback = passback
        self.two_person = two_person
        self.second_factor = second_factor
        self.without_face = without_face

    @property
    def takes_credentials(self) -> bool:
        """Whether cards and PINs decide anything at this door."""
        return self.second_factor is not None or self.without_face is not None

    @classmethod
    def for_door(
        cls,
        access: AccessConfig,
        source: PolicySource,
        presence: Optional[PresenceStore] = None,
        directions: Optional[Mapping[str, str]] = None,
        readers: Optional[Mapping[str, Sequence[str]]] = None,
        cameras: Sequence[str] = (),
    ) -> AccessJudge:
        """The judge of the ``[access]`` section; with ``presence`` (and ``access.anti_passback.mode``
        other than ``off``), anti-passback at the cameras of ``directions`` (camera id → in / out);
        with ``access.second_factor.require`` or ``access.without_face.require``, cards and PINs from
        ``readers`` (reader id → its cameras, none: every camera of ``cameras``)."""
        policy = AccessPolicy(access.groups, access.time_zone)
        passback = None
        if presence is not None and access.anti_passback.mode != "off":
            passback = AntiPassback(access.anti_passback, directions or {}, presence, policy.zone)
        rule = access.two_person
        two_person = TwoPersonRule(rule.groups, rule.companions, rule.within_s) if rule.groups else None
        factor = access.second_factor
        second_factor = None
        if factor.require != "off":
            second_factor = SecondFactorRule(
                factor.require,
                factor.groups,
                factor.within_s,
                factor.max_attempts,
                readers or {},
                factor.lockout_after,
                factor.lockout_s,
            )
        without_face = None
        if access.without_face.require != "off":
            at_one = {}  # a reader's passages count at its one camera (config refuses readers at more)
            for reader, stands_at in (readers or {}).items():
                where = list(stands_at) or list(cameras)
                if len(where) == 1:
                    at_one[reader] = where[0]
            rule_settings = access.without_face
            without_face = WithoutFaceRule(
                rule_settings.require,
                rule_settings.within_s,
                rule_settings.max_attempts,
                at_one,
                rule_settings.lockout_after,
                rule_settings.lockout_s,
                rule_settings.face_optional_groups,
            )
        return cls(policy, source, passback, two_person, second_factor, without_face)

    @classmethod
    def for_appliance(
        cls, config: ApplianceConfig, source: PolicySource, presence: Optional[PresenceStore] = None
    ) -> AccessJudge:
        """:meth:`for_door` with the cameras' directions and the card readers of the whole configuration
        (the daemon's judge)."""
        return cls.for_door(
            config.access,
            source,
            presence,
            config.camera_directions,
            config.reader_cameras,
            [camera.id for camera in config.configured_cameras],
        )

    def judge(self, identity_id: str, now: Optional[datetime] = None) -> Optional[str]:
        """``None`` (admitted), a reason from :data:`appliance.access.policy.REASONS`, or :data:`GONE`."""
        identity = self.source.identity(identity_id)
        if identity is None:
            return GONE
        return self.judge_policy(identity.policy, now)

    def judge_policy(self, policy: IdentityPolicy, now: Optional[datetime] = None) -> Optional[str]:
        """Like :meth:`judge`, for a policy already read."""
        return self.policy.judge(policy, self.source.policy_tables(), now)

    def judge_passage(
        self,
        identity_id: str,
        camera_id: str,
        now: Optional[datetime] = None,
        record: bool = True,
        factors: Tuple[str, ...] = (),
        duress: bool = False,
    ) -> Verdict:
        """:meth:`judge`, then anti-passback at ``camera_id``, then the second factor, then the two-person
        rule; an admitted passage is recorded, with the held ones it completed (``record=False``: only
        asked, as ``access check --camera`` does — the second factor and the two-person rule, which live
        on what happens, are left out). ``factors``: the credentials that decided this passage — a
        card or PIN that completed a held face grant, or a card and PIN without a face — and
        ``duress`` for a duress PIN among them: the policy and anti-passback are asked (again), not
        the second factor."""
        now = self.policy.clock() if now is None else now
        identity = self.source.identity(identity_id)
        if identity is None:
            return Verdict(GONE)
        groups = identity.policy.groups
        reason = self.judge_policy(identity.policy, now)
        if reason is not None:
            return Verdict(reason)
        passback = self.passback is not None and self.passback.is_passback(
            identity_id, groups, camera_id, now
        )
        if passback and self.passback is not None and self.passback.hard:
            return Verdict(PASSBACK)
        if not record:
            return Verdict(None, VIOLATION if passback else None)
        factor = self.second_factor
        if not factors and factor is not None and factor.needs(groups):
            if factor.locked_out(identity_id, now.timestamp()):
                return Verdict(CREDENTIAL_LOCKOUT)
            completion = factor.hold(identity_id, camera_id, identity.policy, now.timestamp())
            if completion is None:
                return Verdict(SECOND_FACTOR)
            factors, duress = ("face", completion.factor), completion.duress
        completed: Tuple[Waiting, ...] = ()
        if self.two_person is not None:
            admitted, completed = self.two_person.admit(identity_id, groups, camera_id, now.timestamp())
            if not admitted:
                return Verdict(TWO_PERSON)
        if self.passback is not None:
            for passage in ((identity_id, camera_id), *((w.identity_id, w.camera_id) for w in completed)):
                self.passback.record(*passage, now)
        return Verdict(
            None,
            VIOLATION if passback else None,
            tuple(w.identity_id for w in completed),
            factors,
            duress,
        )

    def present(
        self, credential: PresentedCredential, now: Optional[datetime] = None
    ) -> List[CredentialPassage]:
        """A card or PIN from a reader at the door: the passages it decided. Without a face (see
        :meth:`_without_face`) first; else the held face grant it decided — admitted (or denied by
        what changed meanwhile: a suspension, another door's passage) when it completed it,
        ``wrong_credential`` when it was not theirs; nothing when nobody waits (it then waits for its
        face) or the door takes no cards or PINs."""
        now = datetime.fromtimestamp(credential.at, timezone.utc) if now is None else now
        if self.without_face is not None:
            passage = self._without_face(self.without_face, credential, now)
            if passage is not None:
                return [passage]
        if self.second_factor is None:
            return []
        decided: List[CredentialPassage] = []
        for outcome in self.second_factor.present(credential, self._policy_of):
            if isinstance(outcome, Completion):
                verdict = self.judge_passage(
                    outcome.identity_id,
                    outcome.camera_id,
                    now,
                    factors=("face", outcome.factor),
                    duress=outcome.duress,
                )
            else:
                verdict = Verdict(WRONG_CREDENTIAL)
            decided.append(CredentialPassage(outcome.identity_id, outcome.camera_id, verdict))
        return decided

    def _policy_of(self, identity_id: str) -> Optional[IdentityPolicy]:
        identity = self.source.identity(identity_id)
        return None if identity is None else identity.policy

    def _face_held(self, identity_id: str) -> bool:
        """Whether the second factor holds ``identity_id``'s face for a card or PIN now."""
        factor = self.second_factor
        return factor is not None and any(w.identity_id == identity_id for w in factor.waiting())

    def _without_face(
        self, rule: WithoutFaceRule, credential: PresentedCredential, now: datetime
    ) -> Optional[CredentialPassage]:
        """A card or PIN at a reader of ``[access.without_face]``: the passage it decided, or ``None``
        when it is not for this rule — a card of someone with a face, a PIN with no card waiting (the
        second factor may take them)."""
        camera_id = rule.camera_of(credential.reader)
        if camera_id is None:
            return None
        at = credential.at
        if credential.kind == "pin":
            wait = rule.waiting(credential.reader, at)
            if wait is None:
                return None
            holder = self.source.identity(wait.identity_id)
            if holder is None:  # removed meanwhile
                rule.forget(credential.reader)
                return CredentialPassage(wait.identity_id, camera_id, Verdict(GONE), ("card", "pin"))
            result = rule.pin(credential, holder.policy)
            assert result is not None  # the wait was there a moment ago, on this thread
            if isinstance(result, PinMatch):
                verdict = self.judge_passage(
                    holder.id, camera_id, now, factors=("card", "pin"), duress=result.duress
                )
            else:
                verdict = Verdict(WRONG_CREDENTIAL)
            return CredentialPassage(holder.id, camera_id, verdict, ("card", "pin"), holder.name)
        # Any card shown here ends the wait of the one before: the PIN that follows is the new card's
        # (or nobody's), never the earlier card's, whoever's card this one is.
        rule.forget(credential.reader)
        holders = self.source.card_holders(credential.value)
        if len(holders) > 1:
            logger.warning(
                "reader %s: a card held by %d identities (fleet records that clash) opens nothing; give it "
                "to one of them",
                credential.reader,
                len(holders),
            )
        if len(holders) != 1:
            return CredentialPassage(None, camera_id, Verdict(None), ("card",))
        holder = holders[0]
        if holder.templates and not (rule.face_optional(holder.policy) and not self._face_held(holder.id)):
            return None  # theirs to complete a face with, not a way in without it
        if rule.locked_out(holder.id, at):
            verdict = Verdict(CREDENTIAL_LOCKOUT)
        elif not rule.needs_pin:
            verdict = self.judge_passage(holder.id, camera_id, now, factors=("card",))
        else:
            verdict = self.judge_passage(holder.id, camera_id, now, record=False)
            if verdict.reason is None:  # nothing refuses it before the PIN: ask for it
                rule.hold(holder.id, credential.reader, at)
                verdict = Verdict(SECOND_FACTOR)
        return CredentialPassage(holder.id, camera_id, verdict, ("card",), holder.name)


__all__ = ["GONE", "AccessJudge", "CredentialPassage", "PolicySource", "Verdict"]
