"""The policy applied to a recognised face: reads the identity's policy and the groups from the gallery
store at the moment of the decision (a change by command or CLI counts from the next passage)."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Optional, Protocol

from .policy import AccessPolicy, IdentityPolicy, PolicyTables
from .settings import AccessConfig

if TYPE_CHECKING:
    from ..gallery.store import Identity

logger = logging.getLogger(__name__)

#: ``judge`` answers this when the identity is no longer in the gallery (removed while in view).
GONE = "gone"


class PolicySource(Protocol):
    """Where the policy is read from: :class:`appliance.gallery.store.TemplateStore`."""

    def identity(self, identity_id: str) -> Optional[Identity]: ...

    def policy_tables(self) -> PolicyTables: ...


class AccessJudge:
    """Judges a recognised identity for this door.

    Args:
        policy: the door's rules (its groups, time zone and clock).
        source: the gallery store.
    """

    def __init__(self, policy: AccessPolicy, source: PolicySource) -> None:
        self.policy = policy
        self.source = source

    @classmethod
    def for_door(cls, access: AccessConfig, source: PolicySource) -> AccessJudge:
        """The judge of the ``[access]`` section."""
        return cls(AccessPolicy(access.groups, access.time_zone), source)

    def judge(self, identity_id: str, now: Optional[datetime] = None) -> Optional[str]:
        """``None`` (admitted), a reason from :data:`appliance.access.policy.REASONS`, or :data:`GONE`."""
        identity = self.source.identity(identity_id)
        if identity is None:
            return GONE
        return self.judge_policy(identity.policy, now)

    def judge_policy(self, policy: IdentityPolicy, now: Optional[datetime] = None) -> Optional[str]:
        """Like :meth:`judge`, for a policy already read."""
        return self.policy.judge(policy, self.source.policy_tables(), now)


__all__ = ["GONE", "AccessJudge", "PolicySource"]
