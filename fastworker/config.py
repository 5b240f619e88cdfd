"""Configuration: command line, environment and Sidekiq YAML → one frozen ``Config``.

Duties:
1. Declare every option once (``OPTIONS``): its Config field, flags, environment variables, YAML keys,
   parser and help text. The argparse parser, the env reader and the YAML reader are all built from it.
2. Resolve each field by precedence: flag > environment > file (``-C``, or the ``config/sidekiq.yml`` /
   ``config/sidekiq.yml.erb`` found under the app root as Sidekiq's CLI finds it) > default.
   (The Sidekiq-side answer from the sidecar, when one is used, is a layer of its own: see
   fastworker/sidekiq_config.py.)
3. Read a Sidekiq ``config/sidekiq.yml`` as Sidekiq does (``cli.rb#parse_config``): ERB first (a small,
   safe subset: ENV lookups and literals, never Ruby), then YAML with ``:symbol`` keys, then the section
   named after the environment merged over the top level. Unknown keys are ignored, as Sidekiq does.
4. Validate, and name the culprit in every error: the flag (``--concurrency``), the environment variable
   (``FASTWORKER_CONCURRENCY``) or the file and key (``config/sidekiq.yml: key :concurrency``).

This module imports nothing heavier than argparse and PyYAML (lazily), so ``--help`` and usage errors
stay fast and never touch asyncio, redis or aiohttp.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from . import capsules as capsule_rules
from . import erb
from .capsules import Capsule
from .redact import redact_url

__all__ = ["OPTIONS", "Config", "ConfigError", "build_parser", "config_from_args", "load_config", "parse_args"]


class ConfigError(Exception):
    """A bad option value; the message starts with what to fix (flag, env var, or file and key)."""


# ---------------------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """Everything the worker needs to know, already validated.

    ``queues`` holds ``(name, weight)`` pairs in the order given (a name appears once: duplicates are
    refused when read, as Sidekiq refuses them); weight 0 means no weight was given. Sidekiq's
    queue order follows from it: ``strict``, ``queue_names`` and ``expanded_queues``.
    """

    queues: tuple[tuple[str, int], ...] = (("default", 0),)
    concurrency: int = 10
    redis_url: str = "redis://127.0.0.1:6379/0"
    sidecar_url: str = "http://127.0.0.1:3001"
    http_host: str = "127.0.0.1"  # another address needs the secret (signing.is_loopback)
    http_port: int = 9394  # 0 disables the HTTP server
    timeout: float = 25.0  # shutdown grace period, seconds
    tag: str = ""
    labels: tuple[str, ...] = ()
    log_format: str = "json"  # json | text
    log_level: str = "info"  # debug | info | warn | warning | error
    environment: str | None = None
    namespace: str = ""  # key prefix for redis-namespace users (Sidekiq 6.x)
    sidekiq_version: str = "auto"  # auto | 6 | 7 | 8: jitter/timestamp flavour; auto = per job
    poll_interval: float = 1.0  # scheduler average, seconds
    heartbeat_interval: float = 5.0
    process_ttl: int = 60
    max_retries: int = 25
    dead_max_jobs: int = 10_000
    dead_timeout: int = 15_552_000  # 180 days, seconds
    breaker_threshold: int = 5
    breaker_cooldown: float = 10.0
    job_timeout: float = 0.0  # 0 = no per-job timeout
    redis_ca_file: str = ""  # TLS (rediss://): the CA that signed the server's certificate
    redis_cert_file: str = ""  # TLS client certificate, and its key
    redis_key_file: str = ""
    max_job_bytes: int = 5 * 1024 * 1024  # limits.MAX_BODY: larger jobs go to the dead set unsent
    sidecar_connect_timeout: float = 5.0
    poison_pill_limit: int = 3
    config_file: str | None = None
    rails_root: str | None = None  # the app root: where config/sidekiq.yml is looked for (cwd if unset)
    sidekiq_config: str = "auto"  # where Sidekiq's settings come from: auto | sidecar | print | file
    config_wait: float = 60.0  # seconds to wait for a booting sidecar's GET /config
    capsules: tuple[Capsule, ...] = ()  # Sidekiq 7+ capsules besides the default one (queues/concurrency)

    def __post_init__(self) -> None:
        # Accept lists from callers building a Config by hand; store tuples so the value stays hashable.
        object.__setattr__(self, "queues", tuple((str(n), int(w)) for n, w in self.queues))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "capsules", tuple(self.capsules))

    @property
    def all_capsules(self) -> tuple[Capsule, ...]:
        """The default capsule (the top-level queues and concurrency) first, then the others."""
        return (Capsule("default", self.concurrency, self.queues), *self.capsules)

    @property
    def total_concurrency(self) -> int:
        return sum(c.concurrency for c in self.all_capsules)

    @property
    def all_queue_names(self) -> tuple[str, ...]:
        """Every queue this process fetches from, in capsule order."""
        return tuple(name for c in self.all_capsules for name, _ in c.queues)

    # the default capsule's queue order (capsules.py holds the rules; the fetch loop reads them there)

    @property
    def strict(self) -> bool:
        return self.all_capsules[0].strict

    @property
    def queue_names(self) -> tuple[str, ...]:
        return self.all_capsules[0].queue_names

    @property
    def expanded_queues(self) -> tuple[str, ...]:
        return self.all_capsules[0].expanded_queues


# ---------------------------------------------------------------------------------------------------------
# Value parsers. Each takes a raw value (a str from argv/env, or whatever YAML produced) and returns the
# field's value, or raises _Bad(expected) and the caller adds "<source>: expected ..., got <value>".
# ---------------------------------------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, expected: str, detail: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.detail = detail  # replaces "expected X, got Y" when set


_INT = re.compile(r"[+-]?\d+")


def _to_int(raw: object, expected: str) -> int:
    if isinstance(raw, bool):
        raise _Bad(expected)
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and _INT.fullmatch(raw.strip()):
        return int(raw.strip())
    raise _Bad(expected)


def _to_float(raw: object, expected: str) -> float:
    if isinstance(raw, bool):
        raise _Bad(expected)
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            raise _Bad(expected) from None
    else:
        raise _Bad(expected)
    if not math.isfinite(value):
        raise _Bad(expected)
    return value


def _int_at_least(minimum: int, expected: str) -> Callable[[object], int]:
    def parse(raw: object) -> int:
        value = _to_int(raw, expected)
        if value < minimum:
            raise _Bad(expected)
        return value

    return parse


def _float_at_least(minimum: float, expected: str, *, strict: bool = False) -> Callable[[object], float]:
    def parse(raw: object) -> float:
        value = _to_float(raw, expected)
        if value < minimum or (strict and value == minimum):
            raise _Bad(expected)
        return value

    return parse


def _port(raw: object) -> int:
    expected = "a port number 0-65535 (0 disables)"
    value = _to_int(raw, expected)
    if not 0 <= value <= 65535:
        raise _Bad(expected)
    return value


def _choice(*choices: str) -> Callable[[object], str]:
    expected = "one of " + ", ".join(choices)

    def parse(raw: object) -> str:
        if isinstance(raw, bool) or not isinstance(raw, (str, int)):
            raise _Bad(expected)
        value = str(raw).strip().lower()
        if value not in choices:
            raise _Bad(expected)
        return value

    return parse


def _text(raw: object) -> str:
    if raw is None:
        return ""
    if isinstance(raw, (dict, list)):
        raise _Bad("a string")
    return erb.ruby_to_s(raw)


def _nonempty_text(raw: object) -> str:
    value = _text(raw).strip()
    if not value:
        raise _Bad("a non-empty string")
    return value


def _url(*schemes: str) -> Callable[[object], str]:
    expected = "a URL with scheme " + ", ".join(f"{s}://" for s in schemes)

    def parse(raw: object) -> str:
        if not isinstance(raw, str) or not raw.strip():
            raise _Bad(expected)
        value = raw.strip()
        shown = redact_url(value)  # an error message must not carry the password
        try:
            parts = urlsplit(value)
            scheme = parts.scheme.lower()
            if scheme not in schemes:
                raise _Bad(expected)
            if scheme == "unix":
                if not parts.path:
                    raise _Bad(expected, f"expected unix:///path/to.sock, got {shown!r}")
            elif not parts.netloc or (not scheme.endswith("+sentinel") and not parts.hostname):
                raise _Bad(expected, f"expected a host in the URL, got {shown!r}")
            elif not scheme.endswith("+sentinel"):  # sentinel URLs list several host:port pairs
                parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise _Bad(expected, f"expected {expected}, got {shown!r} (bad port)") from None
        return value

    return parse


def _sidecar_url(raw: object) -> str:
    # The client joins paths onto this ("/perform"), so a trailing slash would double up.
    # unix:///path.sock: a sidecar on the same host (a pod, a shared volume), Puma's bind unix://
    return _url("http", "unix")(raw).rstrip("/")


def _labels(raw: object) -> tuple[str, ...]:
    """Labels from env (comma-separated), YAML (list or one string) or flags (one per --label)."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        items: list[object] = [part for part in raw.split(",")]
    elif isinstance(raw, list):
        items = raw
    else:
        raise _Bad("a list of labels")
    out: list[str] = []
    for item in items:
        if isinstance(item, (dict, list)) or item is None:
            raise _Bad("a list of labels")
        label = erb.ruby_to_s(item).strip()
        if not label:
            raise _Bad("non-empty labels")
        out.append(label)
    # Sidekiq 7 keeps labels in a Set: duplicates collapse, order of first appearance stays.
    return tuple(dict.fromkeys(out))


# -- queues ---------------------------------------------------------------------------------------------

_QUEUE_SYNTAX = "NAME[:WEIGHT][,NAME[:WEIGHT]...] or Sidekiq's NAME,WEIGHT"


def _weight(text: str, queue: str) -> int:
    if not _INT.fullmatch(text.strip()) or int(text) < 0:
        raise _Bad(
            _QUEUE_SYNTAX, f"queue {queue!r}: weight must be a non-negative integer, got {text.strip()!r}"
        )
    return int(text)


def parse_queue_arg(token: str) -> list[tuple[str, int]]:
    """One ``-q`` value (or FASTWORKER_QUEUES): ``a,b`` | ``a:3,b:1`` | Sidekiq's ``a,3`` (exactly two
    comma parts, the second an integer: queue ``a`` with weight 3)."""
    parts = [part.strip() for part in token.split(",")]
    if len(parts) == 2 and _INT.fullmatch(parts[1]) and parts[0]:
        return [(parts[0], _weight(parts[1], parts[0]))]
    out: list[tuple[str, int]] = []
    for part in parts:
        name, sep, weight = part.rpartition(":")
        if not sep:
            name, weight = part, "0"
        name = name.strip()
        if not name:
            raise _Bad(_QUEUE_SYNTAX, f"empty queue name in {token!r}")
        out.append((name, _weight(weight, name)))
    return out


def refuse_duplicate_queues(queues: Sequence[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    """The one place queue names are de-duplicated: Sidekiq's ``parse_queue`` refuses a name given twice
    in one source (``-q a -q a``, or ``[a, a]`` in the file) with "queues: a cannot be defined twice"."""
    seen: set[str] = set()
    for name, _ in queues:
        if name in seen:
            raise _Bad("", f"queues: {name} cannot be defined twice")
        seen.add(name)
    return tuple(queues)


def _queues_from_args(raw: object) -> tuple[tuple[str, int], ...]:
    tokens = raw if isinstance(raw, list) else [raw]
    out: list[tuple[str, int]] = []
    for token in tokens:
        if not isinstance(token, str):
            raise _Bad(_QUEUE_SYNTAX)
        out.extend(parse_queue_arg(token))
    return refuse_duplicate_queues(out)


def _queues_from_yaml(raw: object) -> tuple[tuple[str, int], ...]:
    """``:queues:`` entries as Sidekiq reads them: ``name``, ``[name]``, ``[name, weight]`` or the string
    ``"name,weight"``. A colon stays part of the name here, as in Sidekiq."""
    entries = raw if isinstance(raw, list) else [raw]
    out: list[tuple[str, int]] = []
    for original in entries:
        entry: Any = original.split(",") if isinstance(original, str) else original
        scalars = isinstance(entry, list) and not any(isinstance(e, (list, dict)) for e in entry)
        if scalars and 1 <= len(entry) <= 2:
            name = erb.ruby_to_s(entry[0]).strip() if entry[0] is not None else ""
            if not name:
                raise _Bad("queue entries: name or [name, weight]", f"empty queue name in {raw!r}")
            weight: object = entry[1] if len(entry) == 2 else 0
            if isinstance(weight, str):
                weight = _weight(weight, name)
            elif isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise _Bad("", f"queue {name!r}: weight must be a non-negative integer, got {weight!r}")
            out.append((name, weight))
        else:
            raise _Bad("name or [name, weight]", f"expected name or [name, weight], got {original!r}")
    if not out:
        raise _Bad("at least one queue", "expected at least one queue, got an empty list")
    return refuse_duplicate_queues(out)


def _capsules_from_args(raw: object) -> tuple[Capsule, ...]:
    try:
        return capsule_rules.parse_flags(raw, lambda text: refuse_duplicate_queues(parse_queue_arg(text)))
    except capsule_rules.CapsuleError as exc:
        raise _Bad("", str(exc)) from None


def _capsules_from_yaml(raw: object) -> tuple[Capsule, ...]:
    try:
        return capsule_rules.parse_mapping(raw, _queues_from_yaml)
    except capsule_rules.CapsuleError as exc:
        raise _Bad("", str(exc)) from None


# ---------------------------------------------------------------------------------------------------------
# The option table
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One Config field as the outside world spells it."""

    field: str
    flags: tuple[str, ...]  # the first long flag names the option in errors
    parse: Callable[[object], Any]
    help: str
    metavar: str | None = None
    env: tuple[str, ...] = ()  # checked in this order; FASTWORKER_<FLAG> is always first
    yaml: tuple[str, ...] = ()  # keys read from -C (after stripping the leading ":")
    repeatable: bool = False
    parse_file: Callable[[object], Any] | None = None  # YAML values, when they differ from argv/env

    @property
    def name(self) -> str:
        return next(f for f in self.flags if f.startswith("--"))

    @property
    def env_vars(self) -> tuple[str, ...]:
        own = "FASTWORKER_" + self.name[2:].upper().replace("-", "_")
        if self.env and self.env[0].startswith("FASTWORKER_"):  # a field-named variable wins (LABELS)
            return tuple(dict.fromkeys((self.env[0], own, *self.env[1:])))
        return tuple(dict.fromkeys((own, *self.env)))


def _opt(field_name: str, *flags: str, parse: Callable[[object], Any], help: str, **kw: Any) -> Option:
    kw.setdefault("yaml", (field_name,))
    return Option(field_name, flags, parse, help, **kw)


OPTIONS: tuple[Option, ...] = (
    _opt("queues", "-q", "--queues", "--queue", parse=_queues_from_args, parse_file=_queues_from_yaml,
         metavar="QUEUES", repeatable=True,
         help="queues in strict order (critical,default), weighted (critical:3,default:1) or Sidekiq's "
              "-q critical,3; repeatable, occurrences concatenate"),
    _opt("capsules", "--capsule", parse=_capsules_from_args, parse_file=_capsules_from_yaml, repeatable=True,
         env=("FASTWORKER_CAPSULES",),
         metavar="NAME=N:QUEUES", help="a Sidekiq 7 capsule: its own fetch pool with N jobs at once over QUEUES "
                                       "(single=1:single, bulk=4:bulk:3,low); repeatable; ';' between them in "
                                       "the environment; :capsules: in the file"),
    _opt("concurrency", "-c", "--concurrency", parse=_int_at_least(1, "a positive integer"), metavar="N",
         help="jobs run at once (falls back to RAILS_MAX_THREADS, as Sidekiq does)"),
    _opt("config_file", "-C", "--config", parse=_nonempty_text, metavar="FILE", yaml=(),
         help="Sidekiq YAML config file; without it, config/sidekiq.yml or config/sidekiq.yml.erb under the "
              "app root is used when present, as Sidekiq's CLI does"),
    _opt("rails_root", "-r", "--rails-root", "--require", parse=_nonempty_text, metavar="DIR", yaml=(),
         env=("RAILS_ROOT",),
         help="the app root (Sidekiq's -r): where config/sidekiq.yml is looked for; default the working "
              "directory"),
    _opt("environment", "-e", "--environment", parse=_nonempty_text, metavar="ENV", yaml=(),
         env=("APP_ENV", "RAILS_ENV", "RACK_ENV"),
         help="application environment; picks the matching section of the -C file (\"development\" if unset)"),
    _opt("sidekiq_config", "--sidekiq-config", parse=_choice("auto", "sidecar", "print", "file"), metavar="SOURCE",
         yaml=(), help="where Sidekiq's settings come from: the sidecar's GET /config, resolved by Sidekiq's own "
                       "code (sidecar; auto falls back to file when no sidecar answers), fastworker-sidecar "
                       "--print-config (print), or fastworker's own YAML/ERB reader (file)"),
    _opt("config_wait", "--config-wait", parse=_float_at_least(0, "a non-negative number of seconds"),
         metavar="SECONDS", yaml=(), help="how long to wait for a booting sidecar's configuration"),
    _opt("redis_url", "--redis-url", parse=_url("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel"),
         metavar="URL",
         env=("REDIS_URL",), help="Redis holding the Sidekiq data (REDIS_PROVIDER is honoured too): redis://, "
         "rediss://, unix:// or redis+sentinel://[user:password@]host:port[,host:port]/MASTER/DB "
         "(rediss+sentinel://: the sentinels over TLS too)"),
    _opt("redis_ca_file", "--redis-ca-file", parse=_text, metavar="FILE",
         help="CA certificate(s) to verify a rediss:// server (default: the system's)"),
    _opt("redis_cert_file", "--redis-cert-file", parse=_text, metavar="FILE",
         help="client certificate for a rediss:// server that asks for one"),
    _opt("redis_key_file", "--redis-key-file", parse=_text, metavar="FILE", help="the client certificate's key"),
    _opt("sidecar_url", "--sidecar-url", parse=_sidecar_url, metavar="URL", help="base URL of the Rails sidecar"),
    _opt("http_host", "--http-host", parse=_nonempty_text, metavar="HOST",
         help="address for /healthz, /readyz and /metrics"),
    _opt("http_port", "--http-port", parse=_port, metavar="PORT",
         help="port for /healthz, /readyz, /metrics (0 disables)"),
    _opt("timeout", "-t", "--timeout", parse=_float_at_least(0, "a non-negative number of seconds"),
         metavar="SECONDS", help="on TERM, how long in-flight jobs may finish before they are requeued"),
    _opt("tag", "-g", "--tag", parse=_text, metavar="NAME", help="process tag shown in the Web UI"),
    _opt("labels", "--label", parse=_labels, metavar="LABEL", repeatable=True, env=("FASTWORKER_LABELS",),
         help="process label shown in the Web UI; repeatable; comma-separated in the environment"),
    _opt("log_format", "--log-format", parse=_choice("json", "text"), metavar="FORMAT", help="json or text"),
    _opt("log_level", "--log-level", parse=_choice("debug", "info", "warn", "warning", "error"),
         metavar="LEVEL", help="debug, info, warn, warning or error"),
    _opt("namespace", "--namespace", parse=_text, metavar="NS",
         help="Redis key prefix, for Sidekiq 6 apps using redis-namespace"),
    _opt("sidekiq_version", "--sidekiq-version", parse=_choice("auto", "6", "7", "8"), metavar="V",
         help="retry jitter and timestamp flavour: auto (per job), 6, 7 or 8"),
    _opt("poll_interval", "--poll-interval", parse=_float_at_least(0, "a positive number of seconds", strict=True),
         metavar="SECONDS", yaml=("poll_interval", "average_scheduled_poll_interval", "poll_interval_average"),
         help="average seconds between scheduled/retry set polls; fastworker's 1 s default is deliberately "
              "faster than Sidekiq's 5 s (:average_scheduled_poll_interval: in the file is honoured)"),
    _opt("heartbeat_interval", "--heartbeat-interval",
         parse=_float_at_least(0, "a positive number of seconds", strict=True), metavar="SECONDS",
         help="seconds between process heartbeats"),
    _opt("process_ttl", "--process-ttl", parse=_int_at_least(1, "a positive integer number of seconds"),
         metavar="SECONDS", help="expiry of the process record; must exceed the heartbeat interval"),
    _opt("max_retries", "--max-retries", parse=_int_at_least(0, "a non-negative integer"), metavar="N",
         help="retries for jobs with retry: true"),
    _opt("dead_max_jobs", "--dead-max-jobs", parse=_int_at_least(0, "a non-negative integer"), metavar="N",
         help="dead set size limit"),
    _opt("dead_timeout", "--dead-timeout", parse=_int_at_least(0, "a non-negative integer number of seconds"),
         metavar="SECONDS", yaml=("dead_timeout", "dead_timeout_in_seconds"),
         help="dead set entries older than this are trimmed"),
    _opt("breaker_threshold", "--breaker-threshold", parse=_int_at_least(1, "a positive integer"), metavar="N",
         help="consecutive sidecar failures that open the circuit"),
    _opt("breaker_cooldown", "--breaker-cooldown", parse=_float_at_least(0, "a non-negative number of seconds"),
         metavar="SECONDS", help="seconds the circuit stays open before a trial request"),
    _opt("job_timeout", "--job-timeout", parse=_float_at_least(0, "a non-negative number of seconds"),
         metavar="SECONDS", help="per-job HTTP timeout (0 = none)"),
    _opt("max_job_bytes", "--max-job-bytes", parse=_int_at_least(1, "a positive integer number of bytes"),
         metavar="BYTES", help="largest job sent to the sidecar; a larger one goes to the dead set, never retried"),
    _opt("sidecar_connect_timeout", "--sidecar-connect-timeout",
         parse=_float_at_least(0, "a positive number of seconds", strict=True), metavar="SECONDS",
         help="TCP connect timeout to the sidecar"),
    _opt("poison_pill_limit", "--poison-pill-limit", parse=_int_at_least(1, "a positive integer"), metavar="N",
         help="process crashes a job may be in flight for before it goes to the dead set"),
)

_BY_FIELD = {opt.field: opt for opt in OPTIONS}
assert set(_BY_FIELD) == {f.name for f in fields(Config)}, "every Config field needs exactly one Option"


# ---------------------------------------------------------------------------------------------------------
# argv
# ---------------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print and exit; we want ConfigError
        raise ConfigError(message)


def _env_help(opt: Option) -> str:
    default = getattr(Config(), opt.field)
    shown = ",".join(f"{n}:{w}" if w else n for n, w in default) if opt.field == "queues" else default
    tail = f"env {', '.join(opt.env_vars)}"
    if shown not in (None, "", ()):
        tail += f"; default {shown}"
    return f"{opt.help} ({tail})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fastworker",
        description="Runs Sidekiq jobs from Redis through a Rails sidecar, in place of the Sidekiq server. "
        "Configuration, first source wins: fastworker flags > FASTWORKER_* variables > Sidekiq's answer "
        "(--sidekiq-config: the sidecar's GET /config, resolved by Sidekiq's own code from its CLI args, "
        "config/sidekiq.yml and the app's configure_server blocks) > REDIS_URL, RAILS_ENV & co > "
        "without an answer: -C or config/sidekiq.yml(.erb) under the app root (-r) > defaults by the app's "
        "Sidekiq version > fastworker defaults. -L, -P, -d are accepted and ignored, as in Sidekiq 6.",
        add_help=False,
        allow_abbrev=False,
    )
    for opt in OPTIONS:
        parser.add_argument(
            *opt.flags,
            dest=opt.field,
            metavar=opt.metavar,
            action="append" if opt.repeatable else "store",
            default=None,
            help=_env_help(opt),
        )
    parser.add_argument("-v", "--verbose", action="store_true", help="same as --log-level debug")
    # Sidekiq 6.0 removed these; 6.4.1's CLI still accepts them, prints a notice and carries on. So do we,
    # so that a `sidekiq ... -L log/sidekiq.log` command line keeps working unchanged.
    parser.add_argument("-L", "--logfile", metavar="PATH", default=None,
                        help="ignored with a warning, as in Sidekiq 6.x: logs go to stdout")
    parser.add_argument("-P", "--pidfile", metavar="PATH", default=None,
                        help="ignored with a warning, as in Sidekiq 6.x: use a process supervisor")
    parser.add_argument("-d", "--daemon", action="store_true",
                        help="ignored with a warning, as in Sidekiq 6.x: use a process supervisor")
    parser.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    parser.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    return parser


REMOVED_FLAG_NOTICES = {
    "daemon": "-d/--daemon is ignored: daemonization was removed in Sidekiq 6.0; run fastworker under a "
              "process supervisor",
    "logfile": "-L/--logfile is ignored: logfile redirection was removed in Sidekiq 6.0; fastworker logs to "
               "stdout only",
    "pidfile": "-P/--pidfile is ignored: PID file creation was removed in Sidekiq 6.0; run fastworker under a "
               "process supervisor",
}


def removed_flag_warnings(ns: argparse.Namespace) -> list[str]:
    """One notice per Sidekiq flag that 6.x accepts but no longer honours (cli.rb prints one and goes on)."""
    return [text for dest, text in REMOVED_FLAG_NOTICES.items() if getattr(ns, dest, None)]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Structure only (unknown flags, missing values); values are checked by ``config_from_args``."""
    return build_parser().parse_args(list(argv))


# ---------------------------------------------------------------------------------------------------------
# Resolution
# ---------------------------------------------------------------------------------------------------------


def load_config(argv: Sequence[str], env: Mapping[str, str]) -> Config:
    """``argv`` without the program name (``sys.argv[1:]``); ``env`` like ``os.environ``."""
    return config_from_args(parse_args(argv), env)


def _parse(opt: Option, raw: object, source: str, *, from_file: bool = False) -> Any:
    parse = opt.parse_file if (from_file and opt.parse_file) else opt.parse
    try:
        return parse(raw)
    except _Bad as bad:
        if bad.detail:
            raise ConfigError(f"{source}: {bad.detail}") from None
        shown = raw[0] if isinstance(raw, list) and len(raw) == 1 else raw
        got = "nothing" if shown is None else repr(shown)
        raise ConfigError(f"{source}: expected {bad.expected}, got {got}") from None


def _from_env(opt: Option, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(variable, value) of the first non-empty variable for this option."""
    names = opt.env_vars
    if opt.field == "redis_url":
        names = (names[0], *_redis_provider(env))
    for name in names:
        value = env.get(name)
        if value is not None and value.strip() != "":
            return name, value
    return None


def _redis_provider(env: Mapping[str, str]) -> tuple[str, ...]:
    # Sidekiq: REDIS_PROVIDER names the variable holding the URL (Heroku add-ons); otherwise REDIS_URL.
    provider = (env.get("REDIS_PROVIDER") or "").strip()
    if not provider:
        return ("REDIS_URL",)
    if ":" in provider:
        raise ConfigError(
            f"REDIS_PROVIDER: expected the name of the variable that holds the Redis URL, got {provider!r}"
        )
    return (provider,)


def config_from_args(ns: argparse.Namespace, env: Mapping[str, str], sidekiq: Mapping[str, Any] | None = None,
                     *, read_file: bool = True, sources_out: dict[str, str] | None = None) -> Config:
    """The layers, highest first (docs/design.md, "Configuration sources"):

    1. fastworker's flags;  2. FASTWORKER_* variables;
    3. ``sidekiq``, Sidekiq's own answer (fastworker/sidekiq_config.py) when there is one: CLI arguments
       given to the sidecar, the YAML, the app's configure_server blocks, in Sidekiq's order, and the
       variables Sidekiq itself reads (REDIS_URL, RAILS_MAX_THREADS, ...) as the sidecar saw them;
    4. the other variables (REDIS_URL, APP_ENV/RAILS_ENV/RACK_ENV, RAILS_ROOT);
    5. without an answer: the -C file, or the config/sidekiq.yml found under the app root, read by the
       Python reader; then RAILS_MAX_THREADS;
    6. defaults by the app's Sidekiq version (concurrency, tag); 7. fastworker's defaults.
    ``read_file=False`` stops before the file (the first pass, which only needs to know how to ask).
    """
    from . import sidekiq_config

    layers = _Layers()
    answer = sidekiq_config.answer_layer(sidekiq, _YAML_KEYS) if sidekiq is not None else {}
    layers.flags(ns)
    layers.environment_and_answer(env, answer)
    if sidekiq is None and read_file:
        layers.file(env)
    values, sources = layers.values, layers.sources
    _version_defaults(values, sources, sidekiq)
    if sources_out is not None:
        sources_out.update(sources)
    config = Config(**values)
    config = _settle_capsules(config, sources.get("capsules", "--capsule"))
    _check_ttl(config, sources)
    return config


class _Layers:
    """The values found so far and where each came from; a field keeps the first value it gets,
    so the layers are applied from the highest precedence down."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def take(self, opt: Option, raw: object, source: str, *, from_file: bool = False) -> None:
        self.values[opt.field] = _parse(opt, raw, source, from_file=from_file)
        self.sources[opt.field] = source

    def flags(self, ns: argparse.Namespace) -> None:
        for opt in OPTIONS:
            raw = getattr(ns, opt.field, None)
            if raw is not None:
                self.take(opt, raw, opt.name)
        if getattr(ns, "verbose", False) and "log_level" not in self.values:
            self.values["log_level"], self.sources["log_level"] = "debug", "--verbose"

    def environment_and_answer(self, env: Mapping[str, str], answer: Mapping[str, tuple[Any, str]]) -> None:
        """FASTWORKER_* variables, then Sidekiq's answer, then the variables Sidekiq reads itself
        (REDIS_URL...), which its answer already reflects when it has the field."""
        later_env: list[tuple[Option, tuple[str, str]]] = []
        for opt in OPTIONS:
            if opt.field in self.values:
                continue
            found = _from_env(opt, env)
            if found is None:
                continue
            if found[0].startswith("FASTWORKER_") or opt.field not in answer:
                self.take(opt, found[1], found[0])
            else:
                later_env.append((opt, found))  # Sidekiq read this variable too; its answer comes first
        for field, (raw, source) in answer.items():
            if field not in self.values:
                self.take(_BY_FIELD[field], raw, source, from_file=True)
        for opt, (name, raw) in later_env:
            if opt.field not in self.values:
                self.take(opt, raw, name)

    def file(self, env: Mapping[str, str]) -> None:
        """Without Sidekiq's answer: the -C file or the one found under the app root, read by the
        Python reader, then RAILS_MAX_THREADS."""
        values = self.values
        config_file = values.get("config_file")
        if config_file is None:
            found_file = discover_config_file(values.get("rails_root"))
            if found_file is not None:
                values["config_file"] = config_file = found_file
                self.sources["config_file"] = found_file
        if config_file is not None:
            # Sidekiq picks the file's section by -e, then APP_ENV/RAILS_ENV/RACK_ENV, then "development".
            section = values.get("environment") or "development"
            for key, (raw, source) in _read_sidekiq_yaml(config_file, self.sources["config_file"], section,
                                                         env).items():
                if key not in values:
                    self.take(_BY_FIELD[key], raw, source, from_file=True)
        if "concurrency" not in values and (env.get("RAILS_MAX_THREADS") or "").strip():
            self.take(_BY_FIELD["concurrency"], env["RAILS_MAX_THREADS"], "RAILS_MAX_THREADS")


def _check_ttl(config: Config, sources: Mapping[str, str]) -> None:
    if config.process_ttl <= config.heartbeat_interval:
        # The process record would expire between heartbeats. Blame whichever of the two was set.
        if "process_ttl" in sources or "heartbeat_interval" not in sources:
            raise ConfigError(
                f"{sources.get('process_ttl', '--process-ttl')}: must be greater than the heartbeat interval "
                f"({config.heartbeat_interval:g} s), got {config.process_ttl}"
            )
        raise ConfigError(
            f"{sources['heartbeat_interval']}: must be less than the process TTL ({config.process_ttl} s), "
            f"got {config.heartbeat_interval:g}"
        )


def _settle_capsules(config: Config, source: str) -> Config:
    """A capsule without its own concurrency takes the top-level one (Sidekiq 7's Capsule.new); a queue
    belongs to one capsule only, so that its jobs have one concurrency limit."""
    if not config.capsules:
        return config
    owner: dict[str, str] = {}
    for cap in config.all_capsules:
        for name, _ in cap.queues:
            if name in owner:
                raise ConfigError(f"{source}: queue {name!r} is in capsules {owner[name]!r} and {cap.name!r}; "
                                  f"a queue belongs to one capsule")
            owner[name] = cap.name
    from dataclasses import replace

    settled = tuple(c if c.concurrency else replace(c, concurrency=config.concurrency) for c in config.capsules)
    return replace(config, capsules=settled)


def _version_defaults(values: dict[str, Any], sources: dict[str, str], sidekiq: Mapping[str, Any] | None) -> None:
    """Defaults that follow the app's Sidekiq (from the sidecar's answer, else the app's Gemfile.lock):
    concurrency 5 on 7.x+ (10 on 6.x, fastworker's default), the retry flavour, and the tag from the app
    folder's name (Sidekiq's ``default_tag``; the sidecar's answer already carries it)."""
    from . import sidekiq_config

    root = values.get("rails_root")
    version = (sidekiq or {}).get("sidekiq_version") or sidekiq_config.app_sidekiq_version(root)
    major = sidekiq_config.sidekiq_major(version)
    if major is not None:
        label = f"default for the app's Sidekiq {version}"
        if major >= 7 and "concurrency" not in values:
            values["concurrency"], sources["concurrency"] = 5, label
        if "sidekiq_version" not in values:
            values["sidekiq_version"], sources["sidekiq_version"] = str(min(max(major, 6), 8)), label
    if "tag" not in values and sidekiq is None:
        tag = default_tag(root or ".")
        if tag:
            values["tag"], sources["tag"] = tag, "default: the app folder's name"


def default_tag(root: str) -> str:
    """Sidekiq's ``default_tag`` for a Rails app folder (one with config/application.rb): its name, or
    for a Capistrano release (``<app>/releases/20240101120000``) the app's name; "" for any other folder."""
    import os

    path = os.path.abspath(root)
    if not os.path.isfile(os.path.join(path, "config", "application.rb")):
        return ""
    name = os.path.basename(path)
    parent = os.path.dirname(path)
    leading = re.match(r"\s*[+-]?\d+", name)  # Ruby's String#to_i reads the leading digits
    if leading and int(leading.group()) != 0 and os.path.basename(parent) == "releases":
        return os.path.basename(os.path.dirname(parent))
    return name


# ---------------------------------------------------------------------------------------------------------
# Sidekiq YAML (-C)
# ---------------------------------------------------------------------------------------------------------

SIDEKIQ_YAML_NAMES = ("sidekiq.yml", "sidekiq.yml.erb")  # looked for in this order; the first found wins


def discover_config_file(rails_root: str | None) -> str | None:
    """Sidekiq 6.4.1's ``setup_options`` without ``-C``: ``<root>/config/sidekiq.yml``, else
    ``<root>/config/sidekiq.yml.erb``, where root is ``-r`` when it is a directory, else the working
    directory (a ``-r`` naming a file is Sidekiq's "require this file" and leaves the root at ".")."""
    import os

    root = rails_root if rails_root and os.path.isdir(rails_root) else "."
    for name in SIDEKIQ_YAML_NAMES:
        path = os.path.join(root, "config", name)
        if os.path.exists(path):
            return path
    return None


# YAML keys this module reads; everything else (:require:, :capsules:, :lifecycle_events:, ...) is ignored.
_YAML_KEYS: dict[str, str] = {key: opt.field for opt in OPTIONS for key in opt.yaml}
_YAML_KEYS["verbose"] = "log_level"


class _Symbol(str):
    """A Ruby symbol from YAML (``:concurrency``); compares and prints as its bare name."""


def _yaml_loader() -> type:
    import yaml

    class SidekiqYamlLoader(yaml.SafeLoader):
        pass

    # Psych turns a plain scalar starting with ":" into a Symbol (quoted ":x" stays a String).
    SidekiqYamlLoader.add_implicit_resolver("!ruby/symbol", re.compile(r"^:."), [":"])

    def construct_symbol(loader: yaml.SafeLoader, node: yaml.Node) -> _Symbol:
        text = loader.construct_scalar(node)  # type: ignore[arg-type]
        if node.tag == "!ruby/symbol" and isinstance(node, yaml.ScalarNode) and node.style is None:
            text = text[1:] if text.startswith(":") else text
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                text = text[1:-1]
        return _Symbol(text)

    for tag in ("!ruby/symbol", "!ruby/sym"):
        SidekiqYamlLoader.add_constructor(tag, construct_symbol)
    return SidekiqYamlLoader


def _key_repr(key: object) -> str:
    return f":{key}" if isinstance(key, _Symbol) else str(key)


def _read_sidekiq_yaml(
    path: str, path_source: str, environment: str, env: Mapping[str, str]
) -> dict[str, tuple[object, str]]:
    """field → (raw value, source label) for the keys fastworker understands."""
    doc = _load_yaml(path, path_source, env)
    return _known_keys(_merge_environment(doc, path, environment)) if doc else {}


def _load_yaml(path: str, path_source: str, env: Mapping[str, str]) -> dict[object, object] | None:
    """The file's top-level mapping after ERB, as Sidekiq reads it; None for an empty file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{path_source}: no such file {path!r}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path_source}: cannot read {path!r}: {exc}") from None

    import yaml

    try:
        doc = yaml.load(render_erb(text, path, env), Loader=_yaml_loader())  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if doc is not None and not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level, got {type(doc).__name__}")
    return doc


def _merge_environment(doc: dict[object, object], path: str, environment: str) -> dict[str, tuple[object, str]]:
    """Like Sidekiq: symbolize keys (later duplicates win), then merge the environment's section on
    top. key → (raw value, source label)."""
    top = {str(k): (v, _key_repr(k)) for k, v in doc.items() if isinstance(k, str)}
    merged: dict[str, tuple[object, str]] = {k: (v, f"{path}: key {r}") for k, (v, r) in top.items()}
    if environment in top:
        section, section_repr = top[environment]
        merged.pop(environment)
        if section is not None:
            if not isinstance(section, dict):
                raise ConfigError(f"{path}: key {section_repr}: expected a mapping of options for the "
                                  f"{environment!r} environment, got {section!r}")
            for k, v in section.items():
                if isinstance(k, str):
                    merged[str(k)] = (v, f"{path}: key {_key_repr(k)} (under {section_repr})")
    return merged


def _known_keys(merged: dict[str, tuple[object, str]]) -> dict[str, tuple[object, str]]:
    """The keys fastworker understands, under its own field names (``verbose`` means debug logs
    unless a log level is given)."""
    out: dict[str, tuple[object, str]] = {}
    for key, (raw, source) in merged.items():
        if key == "verbose":
            if raw not in (None, False) and "log_level" not in merged:
                out["log_level"] = ("debug", source)
        elif key in _YAML_KEYS:
            out[_YAML_KEYS[key]] = (raw, source)
    return out


def render_erb(text: str, path: str, env: Mapping[str, str]) -> str:
    """Sidekiq renders its YAML with ERB first; see fastworker/erb.py for the subset we evaluate."""
    try:
        return erb.render_erb(text, path, env)
    except erb.ErbError as exc:
        raise ConfigError(str(exc)) from None
