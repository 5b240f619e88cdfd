"""The hooks of an exhausted job, in Sidekiq's order, without ever running the job again
(JobRetry#retries_exhausted: ``sidekiq_retries_exhausted``, then the dead set, then the death
handlers).

Duties:
1. ``exhausted(queue, raw, job, error, run_block, to_dead)``: the job leaves its in-progress
   list for the hooks set (``fastworker:hooks``, fastworker's own) in one step, counted
   processed and failed. From there it never goes back to a queue: a hook that cannot run now
   waits for the sidecar, not for a re-run of the job.
2. Its steps then run at once, each one recorded in Redis as it completes:
   - "block": POST /exhausted, phase "block": the block, with the job's live exception when the
     sidecar process that ran the job still holds it (Ruby's Failures). Then one script removes
     the entry, writes the dead set (unless retry false, ``dead: false``, or the block returned
     :discard) and adds the entry's next step;
   - "death": POST /exhausted, phase "death": the death handlers, which find the job in the dead
     set as under Sidekiq; then the entry goes.
   A block that returned :discard ends it: no dead set, no death handlers (Sidekiq 7.2-8.0.6).
3. When the sidecar cannot run a step (unavailable, or no answer within HOOKS_TIMEOUT), the entry
   waits in the set and is tried again RETRY_AFTER seconds later. A process that dies mid-step
   leaves its entry leased for LEASE seconds; then any process takes it over. A step is recorded
   only by the process whose script removed the entry, so two never both write the dead set.
4. The loop: every INTERVAL seconds, claim the due entries (a lease each) and run their steps.
   One tick is ``tick()``; quiet or stop ends the loop after the tick in hand.
"""

from __future__ import annotations

from typing import Any

from .broker import REDIS_ERRORS, Broker
from .clock import Clock
from .errors import SidecarUnavailable
from .log import log
from .poll_loop import PollLoop, tick_failed
from .jobjson import dump_job, load_job

LEASE = 60.0  # seconds a process has to finish a step before another may take the entry
RETRY_AFTER = 5.0  # seconds before a step the sidecar could not run is tried again
INTERVAL = 5.0  # seconds between the loop's looks for entries that wait
CLAIM = 20  # entries taken per tick at most


class Hooks(PollLoop):
    name = "hooks"

    def __init__(self, broker: Broker, sidecar: Any, clock: Clock, dead_max_jobs: int, dead_timeout: int,
                 metrics: Any = None) -> None:
        super().__init__()
        self.broker = broker
        self.sidecar = sidecar
        self.clock = clock
        self.dead_max_jobs = dead_max_jobs
        self.dead_timeout = dead_timeout
        self.metrics = metrics

    # -- one job -------------------------------------------------------------------------------

    async def exhausted(self, queue: str, raw: bytes, job: dict[str, Any], error: dict[str, Any],
                        run_block: bool, to_dead: bool, pid: str | None = None) -> None:
        """Park the job for its hooks (duty 1), then run them (duty 2). ``pid``: the sidecar
        process that ran the job, asked first for its hooks (it holds the live exception)."""
        entry = dump_job({"step": "block", "queue": queue, "job": job, "error": error,
                          "run_block": run_block, "to_dead": to_dead, "pid": pid})
        await self.broker.park_for_hooks(queue, raw, entry, self.clock.now() + LEASE)
        await self.run_entry(entry)

    async def run_entry(self, entry: bytes) -> None:
        """The steps left of one entry this process holds the lease of."""
        data = load_job(entry)
        job, error, step = data["job"], data["error"], data["step"]
        try:
            if step == "block":
                result = None
                if data["run_block"]:
                    result = await self.sidecar.exhausted(job, error, True, phase="block", pid=data.get("pid"))
                nxt = None if result == "discard" else dump_job({**data, "step": "death"})
                dead = dump_job(job) if data["to_dead"] and nxt is not None else None
                now = self.clock.now()
                if not await self.broker.hooks_step(entry, dead, now, self.dead_max_jobs, self.dead_timeout,
                                                    nxt, now + LEASE):
                    return  # another process took the entry over and did this step
                self._log_block(data, dead is not None, result)
                if nxt is None:
                    return
                entry, step = nxt, "death"
            await self.sidecar.exhausted(job, error, False, phase="death", pid=data.get("pid"))
            await self.broker.hooks_step(entry, None, self.clock.now(), self.dead_max_jobs, self.dead_timeout)
        except SidecarUnavailable as exc:
            log.warn("hooks_waiting", jid=job.get("jid"), step=step,
                     retry_in_s=RETRY_AFTER, error_message=str(exc)[:300])
            await self.broker.hooks_later(entry, self.clock.now() + RETRY_AFTER)

    def _log_block(self, data: dict[str, Any], dead: bool, result: Any) -> None:
        job = data["job"]
        fields = {"jid": job.get("jid"), "class": job.get("wrapped") or job.get("class"), "queue": data["queue"]}
        if dead:
            log.warn("job_dead", **fields, retry_count=job.get("retry_count"),
                     error_class=data["error"].get("class"), error_message=str(data["error"].get("message"))[:500])
            if self.metrics is not None:
                self.metrics.dead()
        else:
            log.info("job_dropped", **fields, reason="retry disabled" if not data["run_block"] else
                     ("retries_exhausted returned discard" if result == "discard" else "dead: false"))

    # -- the loop (PollLoop: start, quiet, stop) -------------------------------------------------

    def interval(self) -> float:
        return INTERVAL

    async def poll(self) -> int:
        """One tick with its errors handled; returns how many entries it worked on."""
        try:
            return await self.tick()
        except REDIS_ERRORS as exc:
            self.broker.health.failed("hooks", exc)
        except Exception as exc:  # a bug or an unexpected reply must not end the loop for good
            tick_failed("hooks", exc)
        return 0

    async def tick(self) -> int:
        """Claim the entries that wait (duty 3) and run their steps."""
        entries = await self.broker.claim_hooks(self.clock.now(), LEASE, CLAIM)
        for entry in entries:
            if self._done:
                break
            await self.run_entry(entry)
        return len(entries)
