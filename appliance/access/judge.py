"""The policy applied to a recognised face: reads the identity's policy and the groups from the gallery
store at the moment of the decision (a change by command or CLI counts from the next passage), then,
at a camera with a direction, anti-passback (:mod:`appliance.access.passback`), and the two-person
rule (:mod:`appliance.access.two_person`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Mapping, Optional, Protocol, Tuple

from .passback import PASSBACK, VIOLATION, AntiPassback
from .policy import AccessPolicy, IdentityPolicy, PolicyTables
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
    """

    reason: Optional[str] = None
    anti_passback: Optional[str] = None
    companions: Tuple[str, ...] = ()


class AccessJudge:
    """Judges a recognised identity for this door.

    Args:
        policy: the door's rules (its groups, time zone and clock).
        source: the gallery store.
        passback: anti-passback, when it is on.
        two_person: the two-person rule, when some groups need a companion.
    """

    def __init__(
        self,
        policy: AccessPolicy,
        source: PolicySource,
        passback: Optional[AntiPassback] = None,
        two_person: Optional[TwoPersonRule] = None,
    ) -> None:
        self.policy = policy
        self.source = source
        self.passback = passback
        self.two_person = two_person

    @classmethod
    def for_door(
        cls,
        access: AccessConfig,
        source: PolicySource,
        presence: Optional[PresenceStore] = None,
        directions: Optional[Mapping[str, str]] = None,
    ) -> AccessJudge:
        """The judge of the ``[access]`` section; with ``presence`` (and ``access.anti_passback.mode``
        other than ``off``), anti-passback at the cameras of ``directions`` (camera id → in / out)."""
        policy = AccessPolicy(access.groups, access.time_zone)
        passback = None
        if presence is not None and access.anti_passback.mode != "off":
            passback = AntiPassback(access.anti_passback, directions or {}, presence, policy.zone)
        rule = access.two_person
        two_person = TwoPersonRule(rule.groups, rule.companions, rule.within_s) if rule.groups else None
        return cls(policy, source, passback, two_person)

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
        self, identity_id: str, camera_id: str, now: Optional[datetime] = None, record: bool = True
    ) -> Verdict:
        """:meth:`judge`, then anti-passback at ``camera_id``, then the two-person rule; an admitted
        passage is recorded, with the held ones it completed (``record=False``: only asked, as
        ``access check --camera`` does — the two-person rule, which lives on what happens, is left out)."""
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
        completed: Tuple[Waiting, ...] = ()
        if self.two_person is not None:
            admitted, completed = self.two_person.admit(identity_id, groups, camera_id, now.timestamp())
            if not admitted:
                return Verdict(TWO_PERSON)
        if self.passback is not None:
            for passage in ((identity_id, camera_id), *((w.identity_id, w.camera_id) for w in completed)):
                self.passback.record(*passage, now)
        return Verdict(None, VIOLATION if passback else None, tuple(w.identity_id for w in completed))


__all__ = ["GONE", "AccessJudge", "PolicySource", "Verdict"]
