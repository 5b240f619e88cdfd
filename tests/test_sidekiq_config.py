"""Sidekiq's own answer (fastworker/sidekiq_config.py): how it is asked for, where it sits among the
configuration sources, the defaults by the app's Sidekiq version, and parity of the Python YAML/ERB reader
with the sidecar's answer (Sidekiq 6.4.1's CLI code plus the app's configure_server) on the same files."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fastworker import sidekiq_config
from fastworker.config import ConfigError, load_config, parse_args, config_from_args
from fastworker.launcher import effective_config
from fastworker.sidekiq_config import SidecarConfigError, app_sidekiq_version

ROOT = Path(__file__).resolve().parents[1]
SIDECAR_BIN = ROOT / "sidecar" / "bin" / "fastworker-sidecar"
DUMMY = ROOT / "sidecar" / "test" / "dummy"

ANSWER_6 = {
    "sidekiq_version": "6.4.1", "environment": "production", "config_file": "/app/config/sidekiq.yml",
    "timeout": 8, "tag": "myapp", "labels": ["ruby"], "verbose": False, "max_retries": 7, "dead_max_jobs": 99,
    "dead_timeout_in_seconds": 3600, "average_scheduled_poll_interval": 5, "poll_interval_average": None,
    "queues": [["critical", 3], ["default", 1]], "concurrency": 4, "capsules": {},
    "redis_url": "redis://10.0.0.5:6379/2", "namespace": None,
    "options": {"heartbeat_interval": 3, "average_scheduled_poll_interval": 5, "concurrency": 4},
}


def config_with(answer: dict | None, argv: list[str] | None = None, env: dict[str, str] | None = None,
                sources: dict[str, str] | None = None):
    return config_from_args(parse_args(argv or []), env or {}, answer, sources_out=sources)


def test_the_answer_sets_what_sidekiq_resolved() -> None:
    sources: dict[str, str] = {}
    c = config_with(ANSWER_6, sources=sources)
    assert c.queues == (("critical", 3), ("default", 1)) and c.concurrency == 4 and c.timeout == 8
    assert (c.tag, c.labels, c.max_retries, c.dead_max_jobs, c.dead_timeout) == ("myapp", ("ruby",), 7, 99, 3600)
    assert c.redis_url == "redis://10.0.0.5:6379/2" and c.environment == "production"
    assert c.heartbeat_interval == 3  # a fastworker key in the file, as Sidekiq merged it into its options
    assert c.poll_interval == 1.0  # Sidekiq's 5 s default is not the app's choice: fastworker's 1 s stays
    assert c.sidekiq_version == "6"
    assert sources["concurrency"] == "sidecar: concurrency"


def test_fastworker_flags_and_variables_win_over_the_answer_which_wins_over_sidekiqs_variables() -> None:
    env = {"FASTWORKER_TIMEOUT": "3", "REDIS_URL": "redis://other:6379/0", "RAILS_MAX_THREADS": "30"}
    c = config_with(ANSWER_6, ["-c", "12"], env)
    assert c.concurrency == 12 and c.timeout == 3.0
    assert c.redis_url == "redis://10.0.0.5:6379/2"  # Ruby's config.redis beats REDIS_URL, as in Sidekiq
    assert config_with({**ANSWER_6, "redis_url": None}, [], env).redis_url == "redis://other:6379/0"


def test_with_an_answer_the_python_reader_is_not_used(tmp_path: Path) -> None:
    (tmp_path / "sidekiq.yml").write_text(":concurrency: <% if true %>3<% end %>\n")  # ERB only Ruby reads
    with pytest.raises(ConfigError):
        load_config(["-C", str(tmp_path / "sidekiq.yml")], {})
    assert config_with(ANSWER_6, ["-C", str(tmp_path / "sidekiq.yml")]).concurrency == 4


def test_an_app_set_scheduled_poll_interval_is_honoured(tmp_path: Path) -> None:
    assert config_with({**ANSWER_6, "options": {"average_scheduled_poll_interval": 2}}).poll_interval == 2
    (tmp_path / "s.yml").write_text(":average_scheduled_poll_interval: 3\n")
    assert load_config(["-C", str(tmp_path / "s.yml")], {}).poll_interval == 3


# -- defaults by the app's Sidekiq version -----------------------------------------------------------------


def rails_app(tmp_path: Path, name: str = "shop", sidekiq: str | None = None) -> Path:
    app = tmp_path / name
    (app / "config").mkdir(parents=True)
    (app / "config" / "application.rb").write_text("# app\n")
    if sidekiq:
        (app / "Gemfile.lock").write_text(f"GEM\n  specs:\n    rails (7.1.0)\n    sidekiq ({sidekiq})\n"
                                          f"      redis-client (>= 0.19)\n")
    return app


def test_concurrency_five_on_sidekiq_7_and_8(tmp_path: Path) -> None:
    assert config_with({**ANSWER_6, "sidekiq_version": "7.3.9", "concurrency": None, "options": {}}).concurrency == 5
    assert config_with({**ANSWER_6, "sidekiq_version": "6.4.1", "concurrency": None, "options": {}}).concurrency == 10
    app = rails_app(tmp_path, sidekiq="8.0.4")
    assert app_sidekiq_version(str(app)) == "8.0.4"
    c = load_config(["-r", str(app)], {})
    assert (c.concurrency, c.sidekiq_version) == (5, "8")
    assert load_config(["-r", str(app), "-c", "9"], {}).concurrency == 9
    assert load_config(["-r", str(rails_app(tmp_path, "old", sidekiq="6.5.12"))], {}).concurrency == 10


def test_tag_defaults_to_the_app_folder_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config(["-r", str(rails_app(tmp_path, "shop"))], {}).tag == "shop"
    release = rails_app(tmp_path / "billing" / "releases", "20240101120000")
    assert load_config(["-r", str(release)], {}).tag == "billing"  # Capistrano, as Sidekiq's default_tag
    assert load_config(["-r", str(release), "-g", "x"], {}).tag == "x"
    monkeypatch.chdir(tmp_path)  # not a Rails app folder: no tag, as Sidekiq sets none
    assert load_config([], {}).tag == ""


# -- asking the sidecar --------------------------------------------------------------------------------------


@pytest.fixture
def stub_sidecar() -> Iterator[tuple[str, list]]:
    answers: list = []  # (status, body) popped per request; the last one stays

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            status, body = answers[0] if len(answers) == 1 else answers.pop(0)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", answers
    server.shutdown()
    server.server_close()


def test_ask_waits_for_a_booting_sidecar(stub_sidecar: tuple[str, list]) -> None:
    url, answers = stub_sidecar
    answers[:] = [(503, {"error": "booting"}), (503, {"error": "booting"}), (200, ANSWER_6)]
    answer = sidekiq_config.ask("auto", url, 10, None, None, {})
    assert answer is not None and answer["concurrency"] == 4 and answer["_source"] == f"sidecar {url}/config"


def test_ask_falls_back_or_fails_by_mode(stub_sidecar: tuple[str, list]) -> None:
    url, answers = stub_sidecar
    answers[:] = [(404, {"error": "not found"})]  # an older sidecar
    assert sidekiq_config.ask("auto", url, 5, None, None, {}) is None
    assert sidekiq_config.ask("file", url, 5, None, None, {}) is None
    with pytest.raises(SidecarConfigError, match="no configuration from"):
        sidekiq_config.ask("sidecar", url, 0.3, None, None, {})
    assert sidekiq_config.ask("auto", "http://127.0.0.1:1", 5, None, None, {}) is None  # nobody listening


def test_the_cli_takes_the_answer_and_logs_where_each_value_came_from(stub_sidecar: tuple[str, list],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from fastworker import cli, launcher

    url, answers = stub_sidecar
    answers[:] = [(200, {**ANSWER_6, "redis_url": "redis://:pw@10.0.0.5:6379/2"})]
    got: dict = {}
    monkeypatch.setattr(launcher, "run", lambda config, sources: got.update(config=config, sources=sources) or 0)
    assert cli.main(["--sidecar-url", url, "-g", "flagtag"], {}) == 0
    c = got["config"]
    assert (c.concurrency, c.tag, c.queues) == (4, "flagtag", (("critical", 3), ("default", 1)))
    logged = effective_config(c, got["sources"])
    assert logged["sources"]["tag"] == "--tag"
    assert logged["sources"]["concurrency"] == f"sidecar {url}/config: concurrency"
    assert logged["sources"]["http_port"] == "default"
    assert logged["values"]["redis_url"] == "redis://:***@10.0.0.5:6379/2"


# -- parity: the Python reader and Sidekiq's own code on the same files ------------------------------------


def _ruby_available() -> bool:
    if shutil.which("ruby") is None:
        return False
    probe = subprocess.run(["ruby", "-e", 'require "sidekiq/cli"; require "rails"; require "puma"'],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


PARITY_FILES = [
    ("sidekiq.yml", ":concurrency: 4\n:timeout: 8\n:tag: t\n:labels:\n  - blue\n  - :green\n:queues:\n"
                    "  - [critical, 3]\n  - default\n  - [low]\n:heartbeat_interval: 3\n"
                    "production:\n  :concurrency: 20\n", {}),
    ("sidekiq.yml", ":concurrency: 4\nproduction:\n  :concurrency: 20\n  :queues:\n    - a\n    - b\n",
     {"RAILS_ENV": "production"}),
    ("sidekiq.yml.erb", ':concurrency: <%= ENV.fetch("C", 5) %>\n:timeout: <%= Integer(ENV["T"] || 9) %>\n'
                        ":queues:\n  - [a, 1]\n  - [b, 1]\n:average_scheduled_poll_interval: 2\n",
     {"C": "3"}),
    (None, "", {}),  # no file: Sidekiq's defaults and the folder's name as tag
]


@pytest.mark.ruby
@pytest.mark.skipif(not _ruby_available(), reason="needs ruby with sidekiq, rails and puma")
@pytest.mark.parametrize(("name", "text", "env"), PARITY_FILES)
def test_python_reader_parity_with_the_sidecars_answer(tmp_path: Path, name: str | None, text: str,
                                                        env: dict[str, str]) -> None:
    app = tmp_path / "myapp"
    shutil.copytree(DUMMY, app, ignore=shutil.ignore_patterns("tmp", "log"))
    if name:
        (app / "config" / name).write_text(text)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env}
    out = subprocess.run(["ruby", str(SIDECAR_BIN), "--rails-root", str(app), "--print-config"],
                         capture_output=True, text=True, env=base, timeout=120)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])

    from_python = load_config(["-r", str(app)], env)
    from_sidekiq = config_with(answer, ["-r", str(app)], env)
    assert (from_python.environment or "development") == from_sidekiq.environment
    # 6.x keeps only the expanded list: weights 0 and 1 read the same there, as they fetch the same
    for field in ("expanded_queues", "strict", "concurrency", "timeout", "tag", "labels", "heartbeat_interval",
                  "poll_interval", "max_retries", "dead_max_jobs", "dead_timeout", "log_level"):
        assert getattr(from_python, field) == getattr(from_sidekiq, field), field
