"""Redis Sentinel (issue 6 item 6): ``--redis-url redis+sentinel://h:p,h:p,h:p/mymaster/0`` through
redis-py's Sentinel support, tested with Debian's redis-sentinel: a master, a replica and three
sentinels on free local ports (configs and data in tmp_path), two workers under load, the master
killed with SIGKILL. The workers must follow the promoted replica and no job may be lost.

Replication is asynchronous, so the last writes before the kill may not have reached the replica:
a fetch or an ack of the final milliseconds can be undone by the failover. Either way the job is
still in Redis (its queue or an in-progress list, where the orphan sweep finds it), so the promise
is at least once: a duplicate is allowed only for a job that first ran before the failover ended.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis

from tests.helpers.faults import (FileStub, PrivateRedis, check_counts, drained, fstub, inprogress_total,  # noqa: F401
                                  jobs, push)
from tests.helpers.procs import Worker, free_port, wait_until

MASTER = "mymaster"


class Sentinels:
    """Three redis-sentinel processes watching ``MASTER`` (quorum 2, down after 1 s)."""

    def __init__(self, dir: Path, master_port: int) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen] = []
        self.logs = []
        for i, port in enumerate(self.ports):
            d = dir / f"sentinel{i}"
            d.mkdir(parents=True)
            conf = d / "sentinel.conf"
            conf.write_text(f"""port {port}
bind 127.0.0.1
dir {d}
sentinel monitor {MASTER} 127.0.0.1 {master_port} 2
sentinel down-after-milliseconds {MASTER} 1000
sentinel failover-timeout {MASTER} 3000
sentinel parallel-syncs {MASTER} 1
""")
            log = open(d / "sentinel.log", "ab")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=log,
                                               stderr=subprocess.STDOUT))
        self.clients = [redis.Redis(port=p, socket_timeout=2, decode_responses=True) for p in self.ports]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def master_port(self) -> int | None:
        try:
            addr = self.clients[0].execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        except redis.RedisError:
            return None
        return int(addr[1]) if addr else None

    def ready(self) -> bool:
        """Every sentinel knows the other two and the replica (a failover needs a majority vote)."""
        try:
            for c in self.clients:
                info = c.execute_command("SENTINEL", "MASTER", MASTER)
                if isinstance(info, list):
                    info = dict(zip(info[::2], info[1::2]))
                if int(info["num-other-sentinels"]) < 2 or int(info["num-slaves"]) < 1:
                    return False
            return True
        except (redis.RedisError, KeyError):
            return False

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in self.logs:
            f.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[PrivateRedis, PrivateRedis, Sentinels]]:
    master = PrivateRedis(tmp_path / "master")
    replica = PrivateRedis(tmp_path / "replica", extra=["--replicaof", "127.0.0.1", str(master.port)])
    rep = replica.client()
    wait_until(lambda: rep.info("replication").get("master_link_status") == "up", 15, 0.05, "replication link")
    rep.close()
    sentinels = Sentinels(tmp_path, master.port)
    try:
        wait_until(sentinels.ready, 30, 0.1, "sentinels to find each other and the replica")
        yield master, replica, sentinels
    finally:
        sentinels.stop()
        replica.stop(signal.SIGKILL)
        master.stop(signal.SIGKILL)


def test_workers_follow_a_promoted_replica_and_lose_nothing(cluster, fstub, tmp_path):
    master, replica, sentinels = cluster
    m = master.client()
    jids = push(m, jobs(500, seconds=0.02))
    assert m.execute_command("WAIT", 1, 5000) == 1  # the jobs themselves are on the replica
    m.close()
    workers = [Worker(sentinels.url, fstub.url, "-c", "3", "--process-ttl", "5", "--heartbeat-interval", "1",
                      "--breaker-cooldown", "0.5", log_path=tmp_path / f"w{i}.log") for i in range(2)]
    try:
        wait_until(lambda: len(fstub.executions()) >= 100, 30, what="100 jobs")
        master.stop(signal.SIGKILL)
        t_kill = time.time()
        wait_until(lambda: sentinels.master_port() == replica.port, 30, 0.1, "the replica promoted")
        t_switch = time.time()
        for w in workers:
            w.wait_event("redis_connection_back", timeout=30)
            assert w.proc.poll() is None
        new = replica.client()
        # the jobs keep running against the new master (orphans of undone acks within the sweep age)
        wait_until(lambda: drained(new) and all(fstub.counts()[j] for j in jids), 60, 0.1, "all jobs")
        assert new.info("replication")["role"] == "master"
        done_after = [r for r in fstub.executions() if r["t"] > t_switch]
        assert done_after, "the workers ran jobs against the promoted replica"
        counts = fstub.counts()
        first_run: dict[str, float] = {}
        for r in fstub.executions():
            first_run.setdefault(r["jid"], r["t"])
        check_counts(counts, jids, may_repeat={j for j, t in first_run.items() if t <= t_switch + 1})
        assert new.zcard("retry") == 0 and new.zcard("dead") == 0
        assert inprogress_total(new) == 0
        print(f"failover: promoted {t_switch - t_kill:.1f} s after the kill; "
              f"{sum(1 for n in counts.values() if n > 1)} jobs ran twice")
        for w in workers:
            assert w.stop() == 0
        new.close()
    finally:
        for w in workers:
            w.kill()
