"""The console's context (what every view needs) and the request helpers views share."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp_session import get_session
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.console import ConsoleSettings
from sync.config.model import Config
from sync.console.authz import Directory, Principal
from sync.console.oidc import SignIn
from sync.console.sessions import SessionPolicy
from sync.console.tokens import DiscoveryClient, TokenValidator


@dataclass
class ConsoleContext:
    """What every view needs; one per running console."""

    config: Config
    settings: ConsoleSettings
    store: AsyncEngine
    directory: Directory
    sign_in: SignIn
    validator: TokenValidator
    discovery: DiscoveryClient
    policy: SessionPolicy
    clock: Callable[[], float] = time.time
    api_audiences: tuple[str, ...] = field(default=())

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)


CONTEXT_KEY = web.AppKey("console", ConsoleContext)


def context_of(request: web.Request) -> ConsoleContext:
    return request.app[CONTEXT_KEY]


async def session_principal(request: web.Request) -> Principal | None:
    """The signed-in user of this browser, or None (expired sessions are cleared here)."""
    context = context_of(request)
    session = await get_session(request)
    return context.policy.current(session)
