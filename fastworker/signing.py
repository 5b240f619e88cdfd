"""Request signing between the worker and the sidecar (design.md "Authentication").

Duties:
1. Read the shared secret: ``FASTWORKER_SIDECAR_SECRET``, or the file named by
   ``FASTWORKER_SIDECAR_SECRET_FILE`` (Docker and Kubernetes secrets). A secret shorter than
   ``MIN_SECRET_BYTES`` is refused, naming the variable it came from.
2. Sign: the headers that carry a timestamp, a fresh nonce and HMAC-SHA256 over the canonical
   string (``canonical``). The sidecar's Ruby twin is sidecar/lib/fastworker/sidecar/auth.rb;
   both must build the same bytes.
3. Verify (the stub sidecar, tests): the same MAC compared in constant time, the timestamp
   inside the window, and each nonce accepted once while it could still be fresh.
4. Say whether a bind address is loopback-only (the rule "a non-loopback address needs a
   secret" is the same for the worker's HTTP endpoints and the sidecar).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping

SECRET_ENV = "FASTWORKER_SIDECAR_SECRET"
SECRET_FILE_ENV = "FASTWORKER_SIDECAR_SECRET_FILE"
MIN_SECRET_BYTES = 32
WINDOW = 30  # seconds a signed request stays acceptable either side of the sidecar's clock

TIMESTAMP = "X-Fastworker-Timestamp"
NONCE = "X-Fastworker-Nonce"
SIGNATURE = "X-Fastworker-Signature"
SCHEME = "v1"


class SecretError(ValueError):
    """The secret is unreadable or too short; the message names the variable."""


def load_secret(env: Mapping[str, str]) -> bytes | None:
    """The shared secret, or None when neither variable is set (signing off: loopback only)."""
    value = env.get(SECRET_ENV) or ""
    path = env.get(SECRET_FILE_ENV) or ""
    if value and path:
        raise SecretError(f"{SECRET_ENV} and {SECRET_FILE_ENV} are both set; set only one")
    if path:
        try:
            with open(path, "rb") as fh:
                secret = fh.read().rstrip(b"\r\n")  # secret files usually end with a newline
        except OSError as exc:
            raise SecretError(f"{SECRET_FILE_ENV}: cannot read {path!r}: {exc.strerror}") from None
        source = f"{SECRET_FILE_ENV} ({path})"
    elif value:
        secret, source = value.encode("utf-8"), SECRET_ENV
    else:
        return None
    if len(secret) < MIN_SECRET_BYTES:
        # never echo the secret itself, not even its start
        raise SecretError(f"{source}: the secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}")
    return secret


def canonical(method: str, path: str, timestamp: str, nonce: str, idempotency: str) -> bytes:
    """Everything signed before the body: one field per line, the body follows the last newline.
    The idempotency key is signed as HTTP delivers a header value: without surrounding spaces and
    tabs (RFC 9110's optional whitespace), which the server's parser drops."""
    idempotency = idempotency.strip(" \t")
    return f"fastworker-{SCHEME}\n{method}\n{path}\n{timestamp}\n{nonce}\n{idempotency}\n".encode()


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere, or "0.0.0.0"-like wildcards


class Signer:
    """Adds the signature headers to one request. The keyed HMAC state is built once and copied
    per request, so a request costs one pass of SHA-256 over its bytes."""

    __slots__ = ("_mac",)

    def __init__(self, secret: bytes) -> None:
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)

    def headers(self, method: str, path: str, body: bytes, idempotency: str = "") -> dict[str, str]:
        timestamp = str(int(time.time()))
        nonce = os.urandom(12).hex()
        mac = self._mac.copy()
        mac.update(canonical(method, path, timestamp, nonce, idempotency))
        mac.update(body)
        return {TIMESTAMP: timestamp, NONCE: nonce, SIGNATURE: f"{SCHEME}={mac.hexdigest()}"}


class Verifier:
    """The sidecar's check, in Python (the stub sidecar uses it; the real one is auth.rb)."""

    def __init__(self, secret: bytes, window: float = WINDOW, clock=time.time) -> None:  # noqa: ANN001
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)
        self.window = window
        self.clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> when it stops mattering

    def check(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> str | None:
        """None when the request is authentic and fresh; otherwise why not (→ 401)."""
        timestamp = headers.get(TIMESTAMP) or ""
        nonce = headers.get(NONCE) or ""
        signature = headers.get(SIGNATURE) or ""
        if not (timestamp and nonce and signature):
            return "missing signature"
        idempotency = headers.get("Idempotency-Key") or headers.get("Idempotency-Keys") or ""
        mac = self._mac.copy()
        mac.update(canonical(method, path, timestamp, nonce, idempotency))
        mac.update(body)
        if not hmac.compare_digest(f"{SCHEME}={mac.hexdigest()}".encode(), signature.encode("utf-8", "replace")):
            return "bad signature"
        now = self.clock()
        try:
            ts = int(timestamp)
        except ValueError:
            return "bad timestamp"
        if abs(now - ts) > self.window:
            return "stale request (timestamp outside the window)"
        while self._seen:
            _, expires = next(iter(self._seen.items()))
            if expires >= now:
                break
            self._seen.popitem(last=False)
        if nonce in self._seen:
            return "replayed request"
        self._seen[nonce] = ts + self.window
        return None


def new_secret() -> str:
    """A secret of the right length (what ``scripts/*.sh`` and the docs suggest)."""
    return secrets.token_urlsafe(48)
