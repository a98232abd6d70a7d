"""Wiring the console: its context (config, store, sign-in, sessions), the aiohttp application
and its own listener (TLS when tls_cert/tls_key are configured, else plain HTTP behind a proxy).

`start_console` is what `dvmirror run` (next to /metrics) and `dvmirror console` (alone) call.
Configured tenants given by domain, and admin tenants given by domain, are resolved to their
directory ids once at start-up from their OpenID configuration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_session import setup as setup_session
from sqlalchemy.ext.asyncio import AsyncEngine

from sync.config.model import Config
from sync.console import api, auth_views, views
from sync.console.authz import Directory
from sync.console.context import CONTEXT_KEY, ConsoleContext
from sync.console.oidc import SignIn
from sync.console.replay import ReplayGuard
from sync.console.security import add_headers
from sync.console.sessions import SessionPolicy, cookie_storage
from sync.console.tokens import DiscoveryClient, TokenRefused, TokenValidator
from sync.dataverse.seams import ssl_context
from sync.errors import ConfigError
from sync.logs import get_logger

PACKAGE_DIR = Path(__file__).parent
SHUTDOWN_TIMEOUT = 2.0
log = get_logger("dvmirror.console")


async def resolve_directory(config: Config, discovery: DiscoveryClient) -> Directory:
    """Tenant names → directory ids, and the admin tenants' ids (domains looked up once)."""
    settings = config.console
    assert settings is not None
    try:
        tenants = {t.name: await discovery.tenant_id_of(t.tenant_id) for t in config.tenants}
        admins = frozenset([await discovery.tenant_id_of(t) for t in settings.admin_tenants])
    except TokenRefused as exc:
        raise ConfigError(
            f"{config.path}: console: cannot resolve a tenant domain to its id ({exc.reason}); "
            "check tenants[].tenant_id / console.admin_tenants and the authority_host"
        ) from None
    return Directory(
        tenants=tenants,
        admin_tenant_ids=admins,
        operator_role=settings.operator_role,
        viewer_role=settings.viewer_role,
    )


async def make_context(
    config: Config, store: AsyncEngine, *, clock: Callable[[], float] = time.time
) -> ConsoleContext:
    settings = config.console
    if settings is None:
        raise ConfigError(f"{config.path}: no [console] section: add one to serve the console")
    app = config.console_app()
    discovery = DiscoveryClient(app.authority_host, ssl_context=ssl_context(app.ca_bundle))
    try:
        directory = await resolve_directory(config, discovery)
    except BaseException:
        await discovery.close()
        raise
    validator = TokenValidator(discovery)
    sign_in = SignIn(
        app,
        redirect_uri=settings.redirect_uri,
        validator=validator,
        directory=directory,
        replay=ReplayGuard(clock=clock),
    )
    return ConsoleContext(
        config=config,
        settings=settings,
        store=store,
        directory=directory,
        sign_in=sign_in,
        validator=validator,
        discovery=discovery,
        policy=SessionPolicy(settings.session_key.get_secret_value(), clock=clock),
        clock=clock,
        api_audiences=(app.client_id, f"api://{app.client_id}"),
    )


def build_app(context: ConsoleContext) -> web.Application:
    app = web.Application()
    app[CONTEXT_KEY] = context
    setup_session(
        app,
        cookie_storage(
            context.settings.session_key.get_secret_value(),
            secure=context.settings.secure_cookie,
        ),
    )
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(PACKAGE_DIR / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    app.on_response_prepare.append(add_headers)
    auth_views.add_routes(app)
    views.add_routes(app)
    api.add_routes(app)
    app.router.add_static("/static/", PACKAGE_DIR / "static", append_version=False)
    return app


@dataclass
class ConsoleServer:
    runner: web.AppRunner
    context: ConsoleContext
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.context.sign_in.close()
        await self.context.discovery.close()


async def start_console(
    config: Config, store: AsyncEngine, *, clock: Callable[[], float] = time.time
) -> ConsoleServer:
    """Serve the console on console.listen; a bad or busy address is a ConfigError."""
    from sync.runtime.http import parse_listen

    context = await make_context(config, store, clock=clock)
    settings = context.settings
    try:
        host, port = parse_listen(settings.listen)
    except ConfigError:
        await context.discovery.close()
        raise ConfigError(
            f"console.listen = {settings.listen!r} is not host:port, e.g. 127.0.0.1:8080"
        ) from None
    runner = web.AppRunner(build_app(context), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    tls = settings.tls_context()
    try:
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
    except OSError as exc:
        await runner.cleanup()
        await context.discovery.close()
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConfigError(
            f"console.listen = {settings.listen!r}: cannot listen there ({reason}); "
            "pick a free port or a local address"
        ) from None
    bound = [a for a in runner.addresses if isinstance(a, tuple)]
    actual = int(bound[0][1]) if bound else port
    shown_host = f"[{host}]" if ":" in host else host
    url = f"{'https' if tls else 'http'}://{shown_host}:{actual}"
    log.info("console_listening", url=url, public_url=settings.public_url)
    return ConsoleServer(runner=runner, context=context, url=url)
