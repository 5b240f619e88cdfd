"""Size limits on what the worker hands the sidecar (design.md "Limits").

Duties:
1. The default bound on one request body: the same number as the sidecar's own default
   (sidecar/lib/fastworker/sidecar/limits.rb), so that out of the box a job the sidecar would
   refuse with 413 is never sent.
2. ``too_large``: the dead-set reason for a job over the bound. Such a job can never run, so it
   goes to the dead set at once and spends no retries.
3. ``agreed``: the bound in force, the smaller of ours and the one the sidecar advertises on
   ``GET /health``.
4. ``one_by_one``: a batch whose jobs fit one by one but not together goes as single requests.
"""

from __future__ import annotations

from typing import Any

from .errors import SidecarUnavailable
from .outcome import NotAttempted

MAX_BODY = 5 * 1024 * 1024
TOO_LARGE_CLASS = "Fastworker::PayloadTooLarge"


def too_large(size: int, limit: int) -> str:
    return (f"payload too large: the job is {size} bytes, over the {limit}-byte limit "
            f"(--max-job-bytes / FASTWORKER_SIDECAR_MAX_BODY); it is never sent to the sidecar")


def agreed(configured: int, health: Any) -> int:
    advertised = health.get("max_body") if isinstance(health, dict) else None
    if isinstance(advertised, int) and not isinstance(advertised, bool) and advertised > 0:
        return min(configured, advertised)
    return configured


async def one_by_one(client: Any, raws: list[bytes], jids: list[str]) -> list[Any]:
    out: list[Any] = []
    for raw, jid in zip(raws, jids, strict=True):
        try:
            out.append(await client.perform(raw, jid))
        except SidecarUnavailable as exc:
            out.append(NotAttempted(exc.reason, exc.status, exc.interrupted, exc.busy))
    return out
