"""Shared dependencies: the container, the authenticated actor and role guards.

They are `async def` because none does I/O: FastAPI would otherwise run each one in the thread
pool, a thread hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from domain.staff import Actor, Role
from inbox.adapters.auth import InvalidToken, verify_token
from inbox.bootstrap import Container
from inbox.adapters.read_models.queries import InboxQueries
from inbox.adapters.read_models.search import RoomSearch
from inbox.entrypoints.web.session import actor_from_cookie


async def get_container(request: Request) -> Container:
    return request.app.state.container  # type: ignore[no-any-return]


ContainerDep = Annotated[Container, Depends(get_container)]

_bearer = HTTPBearer(auto_error=False, description="JWT (HS256) with claims sub, org, role")


async def current_actor(
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    assert container.settings.jwt_secret
    try:
        settings = container.settings
        return verify_token(settings.jwt_secret, credentials.credentials, issuer=settings.jwt_issuer,
                            audience=settings.jwt_audience)
    except InvalidToken as e:
        raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from None


ActorDep = Annotated[Actor, Depends(current_actor)]


async def staff_actor(actor: ActorDep) -> Actor:
    if not actor.role.is_staff:
        raise HTTPException(403, f"role {actor.role.value!r} cannot use the staff inbox")
    return actor


StaffDep = Annotated[Actor, Depends(staff_actor)]


async def viewer_actor(
    request: Request,
    container: ContainerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    """A staff viewer from a bearer token OR the browser's session cookie (web UI, EventSource).

    Only reads may use it: cookie-authenticated writes also need the CSRF check of the web UI."""
    if credentials is not None:
        actor = await current_actor(container, credentials)
    else:
        found = actor_from_cookie(container.settings, request)
        if found is None:
            raise HTTPException(401, "sign in: send a bearer token or the session cookie",
                                headers={"WWW-Authenticate": "Bearer"})
        actor = found
    return await staff_actor(actor)


ViewerDep = Annotated[Actor, Depends(viewer_actor)]


async def ingesting_actor(actor: ActorDep) -> Actor:
    if actor.role not in (Role.INTEGRATION, Role.ADMIN):
        raise HTTPException(403, "only integrations and admins record inbound messages")
    return actor


IngestDep = Annotated[Actor, Depends(ingesting_actor)]


async def get_queries(container: ContainerDep) -> InboxQueries:
    return InboxQueries(container.read_pool)


QueriesDep = Annotated[InboxQueries, Depends(get_queries)]


async def get_search(container: ContainerDep) -> RoomSearch:
    return RoomSearch(container.read_pool)


SearchDep = Annotated[RoomSearch, Depends(get_search)]
