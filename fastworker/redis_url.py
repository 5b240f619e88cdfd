"""Redis connections from a URL: redis://, rediss://, unix:// and redis+sentinel://.

``redis+sentinel://host1:26379,host2:26379/mymaster/0`` connects through redis-py's Sentinel
support, so the workers follow a promoted replica; ``rediss+sentinel://`` talks TLS to the
sentinels as well as to the master. redis-py uses the hiredis parser when the
hiredis package is installed (a test checks that it is the one in use).
TLS: ``rediss://`` (or a Sentinel URL with ``tls``) with the CA and client certificate from
``tls`` (--redis-ca-file, --redis-cert-file, --redis-key-file). ACL users: ``redis://user:pass@host``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 3.0


def connect(url: str, max_connections: int, blocking: bool = False, tls: dict[str, str] | None = None) -> Any:
    opts: dict[str, Any] = dict(max_connections=max_connections, socket_connect_timeout=CONNECT_TIMEOUT,
                                socket_keepalive=True, health_check_interval=30, decode_responses=False)
    tls = {k: v for k, v in (tls or {}).items() if v}  # only the options that were given
    sentinel = url.startswith(("redis+sentinel://", "rediss+sentinel://"))
    if url.startswith("rediss+sentinel://") or (tls and (url.startswith("rediss://") or sentinel)):
        opts.update(tls)
        if sentinel:
            opts["ssl"] = True  # the master connections (the sentinels too with rediss+sentinel://)
    # blocking commands wait up to a few seconds server-side; give them room
    opts["socket_timeout"] = None if blocking else SOCKET_TIMEOUT
    if sentinel:
        return _sentinel(url, opts, tls_to_sentinels=url.startswith("rediss+sentinel://"))
    return aioredis.Redis.from_url(url, **opts)


def _sentinel(url: str, opts: dict[str, Any], tls_to_sentinels: bool = False) -> Any:
    parts = urlsplit(url)
    hosts = []
    for hp in parts.netloc.rsplit("@", 1)[-1].split(","):
        host, _, port = hp.rpartition(":") if ":" in hp else (hp, "", "26379")
        hosts.append((host or "127.0.0.1", int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("redis+sentinel URL needs a master name: redis+sentinel://host:26379/mymaster/0")
    service = unquote(path[0])
    db = int(path[1]) if len(path) > 1 else 0
    q = parse_qs(parts.query)
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username and parts.password else None  # an ACL user
    sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": CONNECT_TIMEOUT}
    if tls_to_sentinels:
        sentinel_kwargs.update({k: v for k, v in opts.items() if k.startswith("ssl")})
    if "sentinel_password" in q:  # the sentinels' own login, when they have one (?sentinel_username=&...)
        sentinel_kwargs["password"] = q["sentinel_password"][0]
        if "sentinel_username" in q:
            sentinel_kwargs["username"] = q["sentinel_username"][0]
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **{k: v for k, v in opts.items()
                                                                    if k not in ("max_connections",)})
    return sentinel.master_for(service, db=db, username=username, password=password,
                               max_connections=opts["max_connections"])


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()
