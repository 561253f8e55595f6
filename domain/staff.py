"""Who acts: staff roles and the actor value object every command carries."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    AGENT = "agent"
    INTEGRATION = "integration"

    @property
    def is_staff(self) -> bool:
        return self in (Role.ADMIN, Role.SUPERVISOR, Role.AGENT)

    @property
    def manages_rooms(self) -> bool:
        """Admins and supervisors may assign anyone, resolve any room and see every room."""
        return self in (Role.ADMIN, Role.SUPERVISOR)


@dataclass(frozen=True)
class Actor:
    user_id: str
    org_id: str
    role: Role
    name: str | None = None
