"""Who may use the dashboard and how actions are protected: credentials from the
environment (a bearer token for scripts, a password for browsers), a CSRF token on every
form, and the headers every page is sent with. Pure checks; the app applies them."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping

import attrs

TOKEN_ENV = "EVQ_WEB_TOKEN"
PASSWORD_ENV = "EVQ_WEB_PASSWORD"
USER_ENV = "EVQ_WEB_USER"
DEFAULT_USER = "evq"

# The pages load nothing from elsewhere and run only the app's own script file.
HEADERS = {
    "content-security-policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; frame-ancestors 'none'; "
                                "form-action 'self'; base-uri 'none'"),
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


@attrs.frozen
class Auth:
    """What a request must carry: `Authorization: Bearer <token>`, or basic auth as
    `user` with `password`. Neither set: no check (listening on loopback only)."""

    token: str | None = attrs.field(default=None, repr=False)
    user: str = DEFAULT_USER
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Auth:
        env = os.environ if env is None else env
        return cls(env.get(TOKEN_ENV) or None, env.get(USER_ENV) or DEFAULT_USER,
                   env.get(PASSWORD_ENV) or None)

    @property
    def required(self) -> bool:
        return self.token is not None or self.password is not None

    def allows(self, authorization: str | None) -> bool:
        """Whether an Authorization header's value carries the credentials."""
        if not self.required:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.token is not None:
            return _same(value.strip(), self.token)
        if scheme == "basic" and self.password is not None:
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, sep, password = decoded.partition(":")
            return bool(sep) and _same(user, self.user) & _same(password, self.password)
        return False


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def csrf_token(secret: bytes) -> str:
    """The token every form of this app carries (a page from elsewhere cannot read it)."""
    return hmac.new(secret, b"evq-web-csrf", "sha256").hexdigest()


def csrf_ok(secret: bytes, given: str | None) -> bool:
    return given is not None and _same(given, csrf_token(secret))


def host_name(host: str) -> str:
    """The name in a Host header or an origin's authority, without the port."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8470
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host: str | None, auth: Auth, allowed: frozenset[str]) -> bool:
    """Whether a request's Host may be answered. Without credentials only loopback
    names (and those the application allowed) are: a page elsewhere that points its own
    name at 127.0.0.1 (DNS rebinding) must not reach an open dashboard."""
    if auth.required:
        return True
    name = host_name(host or "")
    return is_loopback(name) or name in allowed


def is_loopback(name: str) -> bool:
    """Whether a host name is this machine's loopback: `localhost`, or an address in
    127.0.0.0/8 or ::1 (a domain name that merely starts with "127." is not)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def same_origin(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """Whether a form post's Origin header is this site (the Host it was sent to, or a
    name the application allowed). A browser that sent none is checked by the CSRF token
    alone."""
    if origin is None:
        return True
    scheme, sep, authority = origin.partition("://")
    if not sep or scheme not in ("http", "https"):
        return False
    return (host is not None and authority.lower() == host.strip().lower()) or (
        host_name(authority) in allowed)


def refusal_to_listen(host: str, auth: Auth) -> str | None:
    """Why the dashboard must not listen on `host` (None: it may): anywhere but loopback
    needs credentials."""
    if is_loopback(host_name(host)) or auth.required:
        return None
    return (f"evq web would listen on {host} with no authentication: anyone who can reach "
            f"it could read every job and act on them. Set {PASSWORD_ENV} (basic auth, "
            f"user {USER_ENV} or {DEFAULT_USER!r}) or {TOKEN_ENV} (a bearer token), or "
            "listen on 127.0.0.1")
