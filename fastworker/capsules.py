"""Capsules (Sidekiq 7.x/8.x): named fetch pools, each with its own queues and concurrency.

Duties:
1. The value: ``Capsule(name, concurrency, queues)``; the top-level queues and concurrency are the
   ``default`` capsule, these are the others (``Config.capsules``).
2. Read them from every source in one set of rules: ``--capsule NAME=CONCURRENCY:QUEUES`` (repeatable;
   ``FASTWORKER_CAPSULES`` separates them with ``;``), the ``:capsules:`` section of sidekiq.yml
   (``name: {concurrency: N, queues: [q, "q,2", [q, 2]]}``, as Sidekiq 7's CLI and Capsule#queues= read
   it), and the sidecar's answer (Ruby's ``config.capsule(...)``, same shape).
3. A capsule without queues fetches nothing (Sidekiq 7 gives it an empty list) and is left out; a
   capsule without a concurrency takes the top-level one, decided in config.py.
4. The process record's 7.x/8.x view of them: ``mode`` and ``weights`` per capsule (Capsule#to_h).

No asyncio here: config.py imports this for ``--help``. The fetch pools themselves are built by the
launcher (one Limiter and Fetcher each, fastworker/fetch_pools.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Capsule", "queue_mode"]


@dataclass(frozen=True)
class Capsule:
    name: str
    concurrency: int  # 0 = not given: the top-level concurrency applies
    queues: tuple[tuple[str, int], ...]

    @property
    def weights(self) -> dict[str, int]:
        return {name: weight for name, weight in self.queues}

    # the queue order, as the fetch loop follows it

    @property
    def strict(self) -> bool:
        """True when no queue has a weight: always fetch in the given order (Sidekiq 6.4.1 and 7.0.3+)."""
        return all(weight == 0 for _, weight in self.queues)

    @property
    def queue_names(self) -> tuple[str, ...]:
        """Each queue once, in order of first appearance (the strict fetch order; the process record's list)."""
        return tuple(dict.fromkeys(name for name, _ in self.queues))

    @property
    def expanded_queues(self) -> tuple[str, ...]:
        """Sidekiq's weighted list: each name repeated max(weight, 1) times. Shuffle, then de-duplicate."""
        return tuple(name for name, weight in self.queues for _ in range(max(weight, 1)))


def queue_mode(weights: dict[str, int]) -> str:
    """Sidekiq 7/8's capsule mode: strict (no weights), random (all 1) or weighted."""
    if all(w == 0 for w in weights.values()):
        return "strict"
    if all(w == 1 for w in weights.values()):
        return "random"
    return "weighted"


class CapsuleError(ValueError):
    """A bad capsule; config.py adds the source (flag, variable, file and key)."""


def parse_flags(raw: object, parse_queues: Callable[[str], Sequence[tuple[str, int]]]) -> tuple[Capsule, ...]:
    """``NAME=CONCURRENCY:QUEUES`` per --capsule (``single=1:single``, ``bulk=4:bulk:3,low``)."""
    tokens = raw if isinstance(raw, list) else [raw]
    out: list[Capsule] = []
    for token in tokens:
        for part in str(token).split(";"):
            if not part.strip():
                continue
            name, eq, rest = part.partition("=")
            conc, colon, queues = rest.partition(":")
            if not eq or not colon or not name.strip() or not queues.strip():
                raise CapsuleError(f"expected NAME=CONCURRENCY:QUEUES (single=1:single), got {part!r}")
            if not conc.strip().isdigit() or int(conc) < 1:
                raise CapsuleError(f"capsule {name.strip()!r}: concurrency must be a positive integer, got {conc!r}")
            out.append(Capsule(name.strip(), int(conc), tuple(parse_queues(queues))))
    return _checked(out)


def parse_mapping(raw: object, parse_queues: Callable[[object], Sequence[tuple[str, int]]]) -> tuple[Capsule, ...]:
    """The ``:capsules:`` mapping (YAML, or the sidecar's answer)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise CapsuleError(f"expected a mapping of capsule names to {{concurrency, queues}}, got {raw!r}")
    out: list[Capsule] = []
    for name, spec in raw.items():
        spec = spec or {}
        if not isinstance(spec, dict):
            raise CapsuleError(f"capsule {name!s}: expected a mapping with concurrency and queues, got {spec!r}")
        spec = {str(k): v for k, v in spec.items()}
        queues = spec.get("queues")
        if not queues:
            continue  # fetches nothing, as in Sidekiq 7
        conc = spec.get("concurrency")
        if conc is None:
            conc = 0
        elif isinstance(conc, bool) or not isinstance(conc, int) or conc < 1:
            raise CapsuleError(f"capsule {name!s}: concurrency must be a positive integer, got {conc!r}")
        out.append(Capsule(str(name), conc, tuple(parse_queues(queues))))
    return _checked(out)


def _checked(capsules: list[Capsule]) -> tuple[Capsule, ...]:
    names = [c.name for c in capsules]
    for c in capsules:
        if c.name == "default":
            raise CapsuleError("capsule 'default' is the top-level queues and concurrency; name it otherwise")
        if names.count(c.name) > 1:
            raise CapsuleError(f"capsule {c.name!r} is defined twice")
    return tuple(capsules)
