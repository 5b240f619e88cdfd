"""Every Redis key fastworker reads or writes, Sidekiq's and its own, in one place.

Sidekiq's keys (sidekiq-compat.md §2.1) are written exactly as Sidekiq writes them so that the
Ruby client, Sidekiq::API and Sidekiq::Web see one consistent picture. fastworker's private keys
carry the ``fastworker:`` prefix. An optional namespace (Sidekiq 6.x redis-namespace users)
prefixes every key, never a value.
"""

from __future__ import annotations

STATS_TTL = 5 * 365 * 24 * 60 * 60  # Sidekiq keeps daily stats five years


class Keys:
    __slots__ = ("prefix", "queues", "schedule", "retry", "dead", "processes",
                 "stat_processed", "stat_failed", "fw_processes", "fw_recovered",
                 "process_cleanup", "fw_hooks")

    def __init__(self, namespace: str = "") -> None:
        p = f"{namespace}:" if namespace else ""
        self.prefix = p
        self.queues = p + "queues"
        self.schedule = p + "schedule"
        self.retry = p + "retry"
        self.dead = p + "dead"
        self.processes = p + "processes"
        self.stat_processed = p + "stat:processed"
        self.stat_failed = p + "stat:failed"
        self.process_cleanup = p + "process_cleanup"
        # fastworker's own: hash identity -> registration time (epoch s) of every process that owns
        # in-progress lists, and a hash jid -> how many times a crash recovery requeued that job
        self.fw_processes = p + "fastworker:processes"
        self.fw_recovered = p + "fastworker:recovered"
        # sorted set of exhausted jobs whose hooks (sidekiq_retries_exhausted, death handlers) have
        # not all run yet, scored by when a process may next work on them (hooks.py)
        self.fw_hooks = p + "fastworker:hooks"

    def queue(self, name: str) -> str:
        return f"{self.prefix}queue:{name}"

    def pushing(self, set_name: str) -> str:
        """Due members of ``retry`` or ``schedule`` one scheduler took to run through the app's
        client middleware, scored by when their lease ends (scheduler.py, duty 4a)."""
        return f"{self.prefix}fastworker:pushing:{set_name}"

    def queue_name(self, key: str) -> str:
        return key[len(self.prefix) + 6:]

    def stat_processed_day(self, day: str) -> str:
        return f"{self.stat_processed}:{day}"

    def stat_failed_day(self, day: str) -> str:
        return f"{self.stat_failed}:{day}"

    def process(self, identity: str) -> str:
        return self.prefix + identity

    def work(self, identity: str) -> str:
        """Busy-jobs hash, Sidekiq 6.5+ name."""
        return f"{self.prefix}{identity}:work"

    def workers(self, identity: str) -> str:
        """Busy-jobs hash, Sidekiq 6.4.1 name (both are written)."""
        return f"{self.prefix}{identity}:workers"

    def signals(self, identity: str) -> str:
        return f"{self.prefix}{identity}-signals"

    def inprogress(self, identity: str, queue: str) -> str:
        """This process's private list of jobs fetched from ``queue`` and not yet finished."""
        return f"{self.prefix}fastworker:inprogress:{identity}:{queue}"

    def job_metrics(self, bucket: str) -> str:
        """Sidekiq 7+'s per-minute (8.x: and per-10-minute) job metrics hash: ``j|<bucket>``."""
        return f"{self.prefix}j|{bucket}"

    def job_histogram(self, klass: str, window: str, major: int) -> str:
        """Sidekiq 7+'s per-class, per-minute execution-time histogram (a BITFIELD of 26 u16):
        ``<Class>-<window>`` on 7.x, ``h|<Class>-<window>`` on 8.x."""
        return f"{self.prefix}{'h|' if major >= 8 else ''}{klass}-{window}"

    def inprogress_queues(self, identity: str) -> str:
        """Set of queue names this process has in-progress lists for (read by the recoverer)."""
        return f"{self.prefix}fastworker:inprogress-queues:{identity}"
