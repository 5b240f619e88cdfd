"""Credentials out of everything the worker shows: logs, errors, /metrics, /readyz, the process record.

Duties:
1. ``redact_url``: a URL with its password (userinfo, and ``password``/``sentinel_password`` query
   parameters) replaced by ``REDACTED``; the user name, host and path stay, so errors stay useful.
   Every place that shows a URL goes through it; nothing else formats one.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "REDACTED"
_SECRET_PARAMS = re.compile(r"((?:^|&)(?:sentinel_)?password=)[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK  # cannot tell where the password is: show nothing
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        # redis://secret@host: a lone userinfo is the password to Redis clients
        netloc = f"{user}:{MASK}@{hosts}" if sep else f"{MASK}@{hosts}"
    query = _SECRET_PARAMS.sub(lambda m: m.group(1) + MASK, parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url  # nothing secret in it: shown exactly as given
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
