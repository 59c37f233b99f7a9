"""The policy applied to a recognised face: reads the identity's policy and the groups from the gallery
store at the moment of the decision (a change by command or CLI counts from the next passage), then,
at a camera with a direction, anti-passback (:mod:`appliance.access.passback`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Mapping, Optional, Protocol

from .passback import PASSBACK, VIOLATION, AntiPassback
from .policy import AccessPolicy, IdentityPolicy, PolicyTables
from .settings import AccessConfig

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
    """

    reason: Optional[str] = None
    anti_passback: Optional[str] = None


class AccessJudge:
    """Judges a recognised identity for this door.

    Args:
        policy: the door's rules (its groups, time zone and clock).
        source: the gallery store.
        passback: anti-passback, when it is on.
    """

    def __init__(
        self, policy: AccessPolicy, source: PolicySource, passback: Optional[AntiPassback] = None
    ) -> None:
        self.policy = policy
        self.source = source
        self.passback = passback

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
        return cls(policy, source, passback)

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
        """:meth:`judge`, then anti-passback at ``camera_id``; an admitted passage is recorded
        (``record=False``: only asked, as ``access check --camera`` does)."""
        now = self.policy.clock() if now is None else now
        identity = self.source.identity(identity_id)
        if identity is None:
            return Verdict(GONE)
        reason = self.judge_policy(identity.policy, now)
        if reason is not None or self.passback is None:
            return Verdict(reason)
        passback = self.passback.is_passback(identity_id, identity.policy.groups, camera_id, now)
        if passback and self.passback.hard:
            return Verdict(PASSBACK)
        if record:
            self.passback.record(identity_id, camera_id, now)
        return Verdict(None, VIOLATION if passback else None)


__all__ = ["GONE", "AccessJudge", "PolicySource", "Verdict"]
