"""The HTML the simulated sign-in shows: account picker, error page, form_post, signed out.

Rendered by Jinja2 with autoescaping on (names, UPNs, state and error texts come from the
scenario or the request and are never trusted as markup). Every page is ``no-store`` and may
not be framed, as Entra's are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
from aiohttp import web

_TEMPLATES = {
    "base.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}Sign in{% endblock %} · simulated Microsoft Entra ID</title>
<style>body{font-family:sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}
.error{border:1px solid #a00;padding:.5rem;color:#a00}button{margin:.2rem 0}</style>
</head><body>{% block body %}{% endblock %}</body></html>""",
    "picker.html": """{% extends "base.html" %}{% block body %}
<h1>Pick an account</h1>
<p>to continue to app <code>{{ client_id }}</code></p>
{% if error %}<p class="error" id="error">{{ error }}</p>{% endif %}
<ul id="accounts">{% for user in users %}<li>
<form method="post" action="{{ action }}">
<input type="hidden" name="ctx" value="{{ ctx }}">
<input type="hidden" name="login" value="{{ user.upn }}">
<button type="submit" data-upn="{{ user.upn }}">{{ user.name }} ({{ user.upn }})</button>
<small>{{ user.tenant }}</small></form></li>{% endfor %}</ul>
<form method="post" action="{{ action }}"><input type="hidden" name="ctx" value="{{ ctx }}">
<label>Use another account <input name="login" type="email" value="{{ hint }}"></label>
<button type="submit">Next</button></form>
{% endblock %}""",
    "error.html": """{% extends "base.html" %}{% block title %}Sign-in error{% endblock %}
{% block body %}<h1>Sorry, but we're having trouble signing you in.</h1>
<p class="error" id="error" data-error="{{ error }}" data-code="{{ code }}">{{ text }}</p>
<pre>{{ details }}</pre>{% endblock %}""",
    "form_post.html": """{% extends "base.html" %}{% block title %}Working…{% endblock %}
{% block body %}<form method="post" action="{{ action }}" id="response">
{% for name, value in fields.items() %}<input type="hidden" name="{{ name }}" value="{{ value }}">
{% endfor %}<noscript><button type="submit">Continue</button></noscript></form>
<script>document.getElementById("response").submit()</script>{% endblock %}""",
    "signed_out.html": """{% extends "base.html" %}{% block title %}Signed out{% endblock %}
{% block body %}<h1>You signed out of your account</h1>
{% if note %}<p id="note">{{ note }}</p>{% endif %}
<p>It's a good idea to close all browser windows.</p>{% endblock %}""",
}

_ENV = jinja2.Environment(
    loader=jinja2.DictLoader(_TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
)
HEADERS = {
    "Cache-Control": "no-store, no-cache",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


def page(template: str, status: int = 200, **context: Any) -> web.Response:
    body = _ENV.get_template(template).render(**context)
    return web.Response(
        status=status, text=body, content_type="text/html", charset="utf-8", headers=HEADERS
    )


def picker(
    *,
    action: str,
    ctx: str,
    client_id: str,
    users: Sequence[Mapping[str, str]],
    hint: str = "",
    error: str = "",
) -> web.Response:
    return page(
        "picker.html",
        action=action,
        ctx=ctx,
        client_id=client_id,
        users=users,
        hint=hint,
        error=error,
    )


def error_page(body: Mapping[str, Any]) -> web.Response:
    """An AADSTS error shown by Entra itself (HTTP 400), with its trace lines."""
    text, _, details = str(body["error_description"]).partition("\r\n")
    return page(
        "error.html",
        status=400,
        error=body["error"],
        code=body["error_codes"][0],
        text=text,
        details=details.replace("\r\n", "\n"),
    )


def form_post(action: str, fields: Mapping[str, str]) -> web.Response:
    return page("form_post.html", action=action, fields=fields)


def signed_out(note: str = "") -> web.Response:
    return page("signed_out.html", note=note)
