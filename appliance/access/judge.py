"""The policy applied to a recognised face: reads the identity's policy and the groups from the gallery
store at the moment of the decision (a change by command or CLI counts from the next passage), then,
at a camera with a direction, anti-passback (:mod:`appliance.access.passback`), a second factor
(:mod:`appliance.access.second_factor`) and the two-person rule (:mod:`appliance.access.two_person`)."""

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

if TYPE_CHECKING:
    from ..gallery.store import Identity
    from .presence import PresenceStore

logger = logging.getLogger(__name__)

#: ``judge`` answers this when the identity is no longer in the gallery (removed while in view).
GONE = "gone"


class PolicySource(Protocol):
    """Where the policy is read from: :class:`appliance.gallery.store.TemplateStore`."""

    def identity(self, identity_id: str) -> Optional[Identity]: ...

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
        factors: what opened beside the face, ``("face", "card")`` or ``("face", "pin")``, when a
            second factor was asked; else ``()``.
        duress: the PIN was the identity's duress PIN.
    """

    reason: Optional[str] = None
    anti_passback: Optional[str] = None
    companions: Tuple[str, ...] = ()
    factors: Tuple[str, ...] = ()
    duress: bool = False


class AccessJudge:
    """Judges a recognised identity for this door.

    Args:
        policy: the door's rules (its groups, time zone and clock).
        source: the gallery store.
        passback: anti-passback, when it is on.
        two_person: the two-person rule, when some groups need a companion.
        second_factor: the card or PIN a face must add, when the door asks for one.
    """

    def __init__(
        self,
        policy: AccessPolicy,
        source: PolicySource,
        passback: Optional[AntiPassback] = None,
        two_person: Optional[TwoPersonRule] = None,
        second_factor: Optional[SecondFactorRule] = None,
    ) -> None:
        self.policy = policy
        self.source = source
        self.passback = passback
        self.two_person = two_person
        self.second_factor = second_factor

    @classmethod
    def for_door(
        cls,
        access: AccessConfig,
        source: PolicySource,
        presence: Optional[PresenceStore] = None,
        directions: Optional[Mapping[str, str]] = None,
        readers: Optional[Mapping[str, Sequence[str]]] = None,
    ) -> AccessJudge:
        """The judge of the ``[access]`` section; with ``presence`` (and ``access.anti_passback.mode``
        other than ``off``), anti-passback at the cameras of ``directions`` (camera id → in / out);
        with ``access.second_factor.require``, a card or PIN from ``readers`` (reader id → its cameras,
        none: every camera)."""
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
        return cls(policy, source, passback, two_person, second_factor)

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
        completion: Optional[Completion] = None,
    ) -> Verdict:
        """:meth:`judge`, then anti-passback at ``camera_id``, then the second factor, then the two-person
        rule; an admitted passage is recorded, with the held ones it completed (``record=False``: only
        asked, as ``access check --camera`` does — the second factor and the two-person rule, which live
        on what happens, are left out). ``completion``: the card or PIN that completed this held
        grant (:meth:`present`): the policy and anti-passback are asked again, not the second factor."""
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
        if completion is None and factor is not None and factor.needs(groups):
            if factor.locked_out(identity_id, now.timestamp()):
                return Verdict(CREDENTIAL_LOCKOUT)
            completion = factor.hold(identity_id, camera_id, identity.policy, now.timestamp())
            if completion is None:
                return Verdict(SECOND_FACTOR)
        completed: Tuple[Waiting, ...] = ()
        if self.two_person is not None:
            admitted, completed = self.two_person.admit(identity_id, groups, camera_id, now.timestamp())
            if not admitted:
                return Verdict(TWO_PERSON)
        if self.passback is not None:
            for passage in ((identity_id, camera_id), *((w.identity_id, w.camera_id) for w in completed)):
                self.passback.record(*passage, now)
        factors = ("face", completion.factor) if completion is not None else ()
        return Verdict(
            None,
            VIOLATION if passback else None,
            tuple(w.identity_id for w in completed),
            factors,
            completion is not None and completion.duress,
        )

    def present(
        self, credential: PresentedCredential, now: Optional[datetime] = None
    ) -> List[Tuple[str, str, Verdict]]:
        """A card or PIN from a reader at the door: ``(identity id, camera id, verdict)`` for the held
        grant it decided — admitted (or denied by what changed meanwhile: a suspension, another
        door's passage) when it completed it, ``wrong_credential`` when it was not theirs; nothing
        when nobody waits (it then waits for its face) or the door asks for no second factor."""
        if self.second_factor is None:
            return []
        now = datetime.fromtimestamp(credential.at, timezone.utc) if now is None else now

        def policy_of(identity_id: str) -> Optional[IdentityPolicy]:
            identity = self.source.identity(identity_id)
            return None if identity is None else identity.policy

        decided: List[Tuple[str, str, Verdict]] = []
        for outcome in self.second_factor.present(credential, policy_of):
            if isinstance(outcome, Completion):
                verdict = self.judge_passage(outcome.identity_id, outcome.camera_id, now, completion=outcome)
            else:
                verdict = Verdict(WRONG_CREDENTIAL)
            decided.append((outcome.identity_id, outcome.camera_id, verdict))
        return decided


__all__ = ["GONE", "AccessJudge", "PolicySource", "Verdict"]
