"""fastworker.config: precedence, queue syntax, Sidekiq YAML + ERB, and errors that name the culprit."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fastworker.config import OPTIONS, Config, ConfigError, load_config, parse_queue_arg, render_erb


def write(tmp_path: Path, text: str, name: str = "sidekiq.yml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(argv: list[str], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(argv, env or {})
    return str(info.value)


# -- defaults and the Config value ------------------------------------------------------------------------


def test_defaults() -> None:
    config = load_config([], {})
    assert config == Config()
    assert config.queues == (("default", 0),)
    assert config.strict is True
    assert config.queue_names == ("default",)
    assert config.expanded_queues == ("default",)
    assert config.concurrency == 10
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.sidecar_url == "http://127.0.0.1:3001"
    assert (config.http_host, config.http_port) == ("127.0.0.1", 9394)
    assert config.timeout == 25.0
    assert (config.tag, config.labels) == ("", ())
    assert (config.log_format, config.log_level) == ("json", "info")
    assert config.environment is None
    assert (config.namespace, config.sidekiq_version) == ("", "auto")
    assert (config.poll_interval, config.heartbeat_interval, config.process_ttl) == (1.0, 5.0, 60)
    assert (config.max_retries, config.dead_max_jobs, config.dead_timeout) == (25, 10_000, 15_552_000)
    assert (config.breaker_threshold, config.breaker_cooldown) == (5, 10.0)
    assert (config.job_timeout, config.sidecar_connect_timeout, config.poison_pill_limit) == (0.0, 5.0, 3)
    assert config.config_file is None


def test_config_is_frozen_hashable_and_normalises_lists() -> None:
    config = Config(queues=[["a", 2], ("b", 0)], labels=["x"])  # type: ignore[arg-type]
    assert config.queues == (("a", 2), ("b", 0))
    assert config.labels == ("x",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.concurrency = 3  # type: ignore[misc]
    assert hash(config) == hash(Config(queues=(("a", 2), ("b", 0)), labels=("x",)))


def test_every_field_has_a_kebab_flag_and_a_fastworker_env_var() -> None:
    by_field = {opt.field: opt for opt in OPTIONS}
    assert set(by_field) == {f.name for f in dataclasses.fields(Config)}
    for opt in OPTIONS:
        assert opt.name.startswith("--")
        assert f"FASTWORKER_{opt.name[2:].upper().replace('-', '_')}" in opt.env_vars
    assert by_field["labels"].name == "--label"
    assert by_field["config_file"].name == "--config"
    assert by_field["environment"].env_vars == ("FASTWORKER_ENVIRONMENT", "APP_ENV", "RAILS_ENV", "RACK_ENV")
    assert by_field["redis_url"].env_vars == ("FASTWORKER_REDIS_URL", "REDIS_URL")


# -- queues -----------------------------------------------------------------------------------------------


def test_queues_strict_order() -> None:
    config = load_config(["--queues", "critical,default"], {})
    assert config.queues == (("critical", 0), ("default", 0))
    assert config.strict is True
    assert config.queue_names == ("critical", "default")
    assert config.expanded_queues == ("critical", "default")


def test_queues_weighted_with_colons() -> None:
    config = load_config(["--queues", "critical:3,default:1"], {})
    assert config.queues == (("critical", 3), ("default", 1))
    assert config.strict is False
    assert config.expanded_queues == ("critical", "critical", "critical", "default")
    assert config.queue_names == ("critical", "default")


def test_queues_sidekiq_name_comma_weight() -> None:
    config = load_config(["-q", "critical,3", "-q", "default"], {})
    assert config.queues == (("critical", 3), ("default", 0))
    assert config.strict is False
    assert config.expanded_queues == ("critical", "critical", "critical", "default")


def test_queues_repeated_flags_concatenate_and_alias_queue() -> None:
    config = load_config(["-q", "critical", "--queue", "default", "--queues", "low,mailers"], {})
    assert config.queues == (("critical", 0), ("default", 0), ("low", 0), ("mailers", 0))
    assert config.strict is True


def test_queues_all_weights_one_is_not_strict() -> None:
    config = load_config(["-q", "a:1,b:1"], {})
    assert config.strict is False
    assert config.expanded_queues == ("a", "b")


def test_queues_duplicates_are_refused_like_sidekiq(tmp_path: Path) -> None:
    # Sidekiq 6.4.1 parse_queue: "queues: a cannot be defined twice", from -q and from the file alike
    assert error_of(["-q", "a,2", "-q", "b", "-q", "a"]) == "--queues: queues: a cannot be defined twice"
    assert error_of(["--queues", "a,b,a"]) == "--queues: queues: a cannot be defined twice"
    assert error_of([], {"FASTWORKER_QUEUES": "x:1,x:2"}) == "FASTWORKER_QUEUES: queues: x cannot be defined twice"
    path = write(tmp_path, ":queues:\n  - [a, 2]\n  - a\n")
    assert error_of(["-C", path]) == f"{path}: key :queues: queues: a cannot be defined twice"


def test_queues_whitespace_is_stripped() -> None:
    assert parse_queue_arg(" critical : 2 , default ") == [("critical", 2), ("default", 0)]
    assert parse_queue_arg("low , 4") == [("low", 4)]
    assert parse_queue_arg("ns:queue:2") == [("ns:queue", 2)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a:x", "--queues: queue 'a': weight must be a non-negative integer, got 'x'"),
        ("a:-1", "--queues: queue 'a': weight must be a non-negative integer, got '-1'"),
        ("critical,-1", "--queues: queue 'critical': weight must be a non-negative integer, got '-1'"),
        ("a:1.5", "--queues: queue 'a': weight must be a non-negative integer, got '1.5'"),
        ("", "--queues: empty queue name in ''"),
        ("a,,b", "--queues: empty queue name in 'a,,b'"),
        (":3", "--queues: empty queue name in ':3'"),
    ],
)
def test_queue_syntax_errors_name_the_option(value: str, message: str) -> None:
    assert error_of(["-q", value]) == message


def test_queues_from_env_and_env_error() -> None:
    config = load_config([], {"FASTWORKER_QUEUES": "critical:5,default"})
    assert config.queues == (("critical", 5), ("default", 0))
    assert load_config([], {"FASTWORKER_QUEUES": "critical,2"}).queues == (("critical", 2),)
    assert error_of([], {"FASTWORKER_QUEUES": "a:b"}) == (
        "FASTWORKER_QUEUES: queue 'a': weight must be a non-negative integer, got 'b'"
    )


def test_queues_flag_replaces_env_entirely() -> None:
    config = load_config(["-q", "only"], {"FASTWORKER_QUEUES": "a,b"})
    assert config.queues == (("only", 0),)


# -- precedence -------------------------------------------------------------------------------------------


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    path = write(tmp_path, ":concurrency: 7\n:timeout: 9\n:tag: file-tag\n:max_retries: 4\n")
    env = {"FASTWORKER_CONCURRENCY": "8", "FASTWORKER_TIMEOUT": "11"}
    config = load_config(["-C", path, "-c", "9"], env)
    assert config.concurrency == 9  # flag beats env and file
    assert config.timeout == 11.0  # env beats file
    assert config.tag == "file-tag"  # file beats default
    assert config.max_retries == 4
    assert config.dead_max_jobs == 10_000  # default
    assert config.config_file == path


def test_config_file_from_env(tmp_path: Path) -> None:
    path = write(tmp_path, "concurrency: 3\n")
    config = load_config([], {"FASTWORKER_CONFIG": path})
    assert (config.concurrency, config.config_file) == (3, path)


def test_last_flag_wins_for_single_valued_options() -> None:
    assert load_config(["-c", "3", "--concurrency", "4"], {}).concurrency == 4


def test_empty_env_values_are_ignored() -> None:
    config = load_config([], {"FASTWORKER_CONCURRENCY": "", "FASTWORKER_TAG": "  ", "REDIS_URL": ""})
    assert (config.concurrency, config.tag, config.redis_url) == (10, "", "redis://127.0.0.1:6379/0")


def test_redis_url_env_order() -> None:
    env = {"REDIS_URL": "redis://plain:6379/1"}
    assert load_config([], env).redis_url == "redis://plain:6379/1"
    env["FASTWORKER_REDIS_URL"] = "redis://own:6379/2"
    assert load_config([], env).redis_url == "redis://own:6379/2"
    assert load_config(["--redis-url", "rediss://flag:6380/3"], env).redis_url == "rediss://flag:6380/3"


def test_redis_provider_names_the_variable_like_sidekiq() -> None:
    env = {"REDIS_PROVIDER": "REDISTOGO_URL", "REDISTOGO_URL": "redis://togo:1234/4", "REDIS_URL": "redis://x/0"}
    assert load_config([], env).redis_url == "redis://togo:1234/4"
    assert error_of([], {"REDIS_PROVIDER": "redis://oops:6379"}) == (
        "REDIS_PROVIDER: expected the name of the variable that holds the Redis URL, got 'redis://oops:6379'"
    )


def test_environment_sources_in_sidekiq_order() -> None:
    env = {"RACK_ENV": "rack", "RAILS_ENV": "rails", "APP_ENV": "app"}
    assert load_config([], {}).environment is None
    assert load_config([], {"RACK_ENV": "rack"}).environment == "rack"
    assert load_config([], {"RACK_ENV": "rack", "RAILS_ENV": "rails"}).environment == "rails"
    assert load_config([], env).environment == "app"
    assert load_config([], {**env, "FASTWORKER_ENVIRONMENT": "own"}).environment == "own"
    assert load_config(["-e", "flag"], {**env, "FASTWORKER_ENVIRONMENT": "own"}).environment == "flag"


def test_rails_max_threads_is_the_concurrency_fallback(tmp_path: Path) -> None:
    assert load_config([], {"RAILS_MAX_THREADS": "5"}).concurrency == 5
    path = write(tmp_path, ":concurrency: 12\n")
    assert load_config(["-C", path], {"RAILS_MAX_THREADS": "5"}).concurrency == 12
    assert load_config([], {"RAILS_MAX_THREADS": "5", "FASTWORKER_CONCURRENCY": "6"}).concurrency == 6
    assert error_of([], {"RAILS_MAX_THREADS": "lots"}) == (
        "RAILS_MAX_THREADS: expected a positive integer, got 'lots'"
    )


# -- every option: a good value from flag and env, a bad one named by flag and env --------------------------

GOOD = [
    ("concurrency", "25", 25),
    ("redis_url", "unix:///var/run/redis.sock", "unix:///var/run/redis.sock"),
    ("sidecar_url", "unix:///run/fastworker/sidecar.sock", "unix:///run/fastworker/sidecar.sock"),
    ("http_host", "127.0.0.1", "127.0.0.1"),
    ("http_port", "0", 0),
    ("timeout", "7.5", 7.5),
    ("tag", "blue", "blue"),
    ("log_format", "TEXT", "text"),
    ("log_level", "Warning", "warning"),
    ("environment", "staging", "staging"),
    ("namespace", "myapp", "myapp"),
    ("sidekiq_version", "7", "7"),
    ("poll_interval", "0.25", 0.25),
    ("heartbeat_interval", "2", 2.0),
    ("process_ttl", "30", 30),
    ("max_retries", "0", 0),
    ("dead_max_jobs", "500", 500),
    ("dead_timeout", "3600", 3600),
    ("breaker_threshold", "2", 2),
    ("breaker_cooldown", "0", 0.0),
    ("job_timeout", "120", 120.0),
    ("sidecar_connect_timeout", "0.5", 0.5),
    ("poison_pill_limit", "1", 1),
]

BAD = [
    ("concurrency", "abc", "expected a positive integer, got 'abc'"),
    ("concurrency", "0", "expected a positive integer, got '0'"),
    ("concurrency", "2.5", "expected a positive integer, got '2.5'"),
    ("http_port", "65536", "expected a port number 0-65535 (0 disables), got '65536'"),
    ("http_port", "-1", "expected a port number 0-65535 (0 disables), got '-1'"),
    ("timeout", "-1", "expected a non-negative number of seconds, got '-1'"),
    ("timeout", "soon", "expected a non-negative number of seconds, got 'soon'"),
    ("timeout", "nan", "expected a non-negative number of seconds, got 'nan'"),
    ("log_format", "xml", "expected one of json, text, got 'xml'"),
    ("log_level", "trace", "expected one of debug, info, warn, warning, error, got 'trace'"),
    ("sidekiq_version", "5", "expected one of auto, 6, 7, 8, got '5'"),
    ("poll_interval", "0", "expected a positive number of seconds, got '0'"),
    ("heartbeat_interval", "x", "expected a positive number of seconds, got 'x'"),
    ("process_ttl", "0", "expected a positive integer number of seconds, got '0'"),
    ("max_retries", "many", "expected a non-negative integer, got 'many'"),
    ("dead_max_jobs", "1e3", "expected a non-negative integer, got '1e3'"),
    ("dead_timeout", "-5", "expected a non-negative integer number of seconds, got '-5'"),
    ("breaker_threshold", "0", "expected a positive integer, got '0'"),
    ("breaker_cooldown", "-0.1", "expected a non-negative number of seconds, got '-0.1'"),
    ("job_timeout", "inf", "expected a non-negative number of seconds, got 'inf'"),
    ("sidecar_connect_timeout", "0", "expected a positive number of seconds, got '0'"),
    ("poison_pill_limit", "0", "expected a positive integer, got '0'"),
    ("http_host", " ", "expected a non-empty string, got ' '"),
    ("environment", "", "expected a non-empty string, got ''"),
]

_OPT = {opt.field: opt for opt in OPTIONS}


@pytest.mark.parametrize(("field", "raw", "value"), GOOD)
def test_good_value_from_flag_and_env(field: str, raw: str, value: object) -> None:
    opt = _OPT[field]
    assert getattr(load_config([f"{opt.name}={raw}"], {}), field) == value
    assert getattr(load_config([], {opt.env_vars[0]: raw}), field) == value


@pytest.mark.parametrize(("field", "raw", "message"), BAD)
def test_bad_value_names_the_flag(field: str, raw: str, message: str) -> None:
    opt = _OPT[field]
    assert error_of([f"{opt.name}={raw}"]) == f"{opt.name}: {message}"


@pytest.mark.parametrize(("field", "raw", "message"), [b for b in BAD if b[1].strip()])
def test_bad_value_names_the_env_var(field: str, raw: str, message: str) -> None:
    opt = _OPT[field]
    assert error_of([], {opt.env_vars[0]: raw}) == f"{opt.env_vars[0]}: {message}"


def test_short_flags() -> None:
    config = load_config(["-c", "3", "-t", "4", "-g", "g", "-e", "prod", "-q", "x"], {})
    assert (config.concurrency, config.timeout, config.tag, config.environment, config.queues) == (
        3, 4.0, "g", "prod", (("x", 0),)
    )


def test_bad_short_flag_is_reported_by_its_long_name() -> None:
    assert error_of(["-c", "abc"]) == "--concurrency: expected a positive integer, got 'abc'"
    assert error_of(["-t", "-3"]) == "--timeout: expected a non-negative number of seconds, got '-3'"


REDIS_SCHEMES = "expected a URL with scheme redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://"


@pytest.mark.parametrize(
    "url",
    [
        "redis://h:6379/0",
        "rediss://user:pw@h:6380/1",
        "unix:///tmp/r.sock?db=2",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
    ],
)
def test_redis_url_schemes_accepted(url: str) -> None:
    assert load_config(["--redis-url", url], {}).redis_url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:6379", f"{REDIS_SCHEMES}, got 'http://h:6379'"),
        ("localhost:6379", f"{REDIS_SCHEMES}, got 'localhost:6379'"),
        ("redis://", "expected a host in the URL, got 'redis://'"),
        ("unix://", "expected unix:///path/to.sock, got 'unix://'"),
        ("redis://h:port/0", f"{REDIS_SCHEMES}, got 'redis://h:port/0' (bad port)"),
    ],
)
def test_redis_url_rejected(url: str, message: str) -> None:
    assert error_of(["--redis-url", url]) == f"--redis-url: {message}"
    assert error_of([], {"REDIS_URL": url}) == f"REDIS_URL: {message}"


def test_sidecar_url_rejected() -> None:
    assert error_of(["--sidecar-url", "ftp://x"]) == "--sidecar-url: expected a URL with scheme http://, unix://, got 'ftp://x'"
    assert error_of(["--sidecar-url", "http://"]) == "--sidecar-url: expected a host in the URL, got 'http://'"


def test_ports_at_the_bounds() -> None:
    assert load_config(["--http-port", "65535"], {}).http_port == 65535
    assert load_config(["--http-port", "0"], {}).http_port == 0
    assert load_config(["--timeout", "0"], {}).timeout == 0.0


def test_labels_from_flags_env_and_duplicates() -> None:
    assert load_config(["--label", "a", "--label", "b,c", "--label", "a"], {}).labels == ("a", "b,c")
    assert load_config([], {"FASTWORKER_LABELS": "x, y,x"}).labels == ("x", "y")
    assert load_config([], {"FASTWORKER_LABEL": "z"}).labels == ("z",)
    assert error_of(["--label", ""]) == "--label: expected non-empty labels, got ''"
    assert error_of([], {"FASTWORKER_LABELS": "a,,b"}) == "FASTWORKER_LABELS: expected non-empty labels, got 'a,,b'"


def test_verbose_flag_is_debug_unless_log_level_given() -> None:
    assert load_config(["-v"], {}).log_level == "debug"
    assert load_config(["--verbose", "--log-level", "error"], {}).log_level == "error"
    assert load_config(["-v"], {"FASTWORKER_LOG_LEVEL": "error"}).log_level == "debug"


def test_process_ttl_must_exceed_heartbeat() -> None:
    assert error_of(["--process-ttl", "5"]) == "--process-ttl: must be greater than the heartbeat interval (5 s), got 5"
    assert error_of(["--heartbeat-interval", "90"]) == (
        "--heartbeat-interval: must be less than the process TTL (60 s), got 90"
    )
    assert error_of([], {"FASTWORKER_PROCESS_TTL": "4"}) == (
        "FASTWORKER_PROCESS_TTL: must be greater than the heartbeat interval (5 s), got 4"
    )
    assert load_config(["--process-ttl", "6", "--heartbeat-interval", "5.5"], {}).process_ttl == 6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["stray"], "unrecognized arguments: stray"),
        (["-c"], "argument -c/--concurrency: expected one argument"),
        (["--conc", "3"], "unrecognized arguments: --conc 3"),
    ],
)
def test_usage_errors_are_config_errors(argv: list[str], message: str) -> None:
    assert error_of(argv) == message


# -- Sidekiq YAML -----------------------------------------------------------------------------------------

SIDEKIQ_YML = """\
---
:concurrency: 5
:timeout: 8
:tag: myapp
:labels:
  - blue
  - :green
:queues:
  - [critical, 3]
  - default
  - [low]
  - :mailers
:require: ./app
:lifecycle_events: whatever
:capsules:
  single:
    :concurrency: 1
production:
  :concurrency: 20
  :queues:
    - critical
    - default
:staging:
  :verbose: true
  max_retries: 3
"""


def test_yaml_symbol_keys_queues_and_labels(tmp_path: Path) -> None:
    path = write(tmp_path, SIDEKIQ_YML)
    config = load_config(["-C", path], {})
    assert config.concurrency == 5
    assert config.timeout == 8.0
    assert config.tag == "myapp"
    assert config.labels == ("blue", "green")
    assert config.queues == (("critical", 3), ("default", 0), ("low", 0), ("mailers", 0))
    assert config.strict is False
    assert config.expanded_queues == ("critical", "critical", "critical", "default", "low", "mailers")
    assert config.log_level == "info"
    assert config.max_retries == 25


def test_yaml_plain_environment_section_replaces_keys(tmp_path: Path) -> None:
    path = write(tmp_path, SIDEKIQ_YML)
    config = load_config(["-C", path], {"RAILS_ENV": "production"})
    assert config.environment == "production"
    assert config.concurrency == 20
    assert config.queues == (("critical", 0), ("default", 0))  # shallow merge: the section's list wins
    assert config.strict is True
    assert config.timeout == 8.0  # untouched top-level keys stay


def test_yaml_symbol_environment_section_and_verbose(tmp_path: Path) -> None:
    path = write(tmp_path, SIDEKIQ_YML)
    config = load_config(["-C", path, "-e", "staging"], {})
    assert config.log_level == "debug"
    assert config.max_retries == 3
    assert config.concurrency == 5


def test_yaml_development_section_is_used_when_no_environment(tmp_path: Path) -> None:
    path = write(tmp_path, ":concurrency: 5\ndevelopment:\n  :concurrency: 2\nproduction:\n  :concurrency: 9\n")
    assert load_config(["-C", path], {}).concurrency == 2
    assert load_config(["-C", path], {}).environment is None
    assert load_config(["-C", path], {"APP_ENV": "test"}).concurrency == 5


def test_yaml_plain_keys_and_fastworker_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "concurrency: 4\nqueues:\n  - [a, 2]\n  - 'b,1'\n  - [c, '3']\nredis_url: redis://cfg:6379/5\n"
        "sidecar_url: http://side:9000/\nhttp_port: 0\nnamespace: legacy\nsidekiq_version: 6\n"
        "dead_timeout_in_seconds: 60\npoll_interval_average: 2.5\nlog_format: text\n",
    )
    config = load_config(["-C", path], {})
    assert config.concurrency == 4
    assert config.queues == (("a", 2), ("b", 1), ("c", 3))
    assert config.redis_url == "redis://cfg:6379/5"
    assert config.sidecar_url == "http://side:9000"
    assert config.http_port == 0
    assert config.namespace == "legacy"
    assert config.sidekiq_version == "6"
    assert config.dead_timeout == 60
    assert config.poll_interval == 2.5
    assert config.log_format == "text"


def test_yaml_queue_names_keep_colons_like_sidekiq(tmp_path: Path) -> None:
    path = write(tmp_path, ":queues:\n  - mailers:urgent\n  - [ns:low, 2]\n")
    assert load_config(["-C", path], {}).queues == (("mailers:urgent", 0), ("ns:low", 2))


def test_yaml_explicit_log_level_beats_verbose(tmp_path: Path) -> None:
    path = write(tmp_path, ":verbose: true\n:log_level: warn\n")
    assert load_config(["-C", path], {}).log_level == "warn"
    path = write(tmp_path, ":verbose: false\n", "quiet.yml")
    assert load_config(["-C", path], {}).log_level == "info"


def test_yaml_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    config = load_config(["-C", path], {})
    assert config == Config(config_file=path)


def test_yaml_later_duplicate_key_wins_like_symbolize_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "concurrency: 3\n:concurrency: 6\n")
    assert load_config(["-C", path], {}).concurrency == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (":concurrency: abc\n", "key :concurrency: expected a positive integer, got 'abc'"),
        ("concurrency: 0\n", "key concurrency: expected a positive integer, got 0"),
        (":concurrency:\n", "key :concurrency: expected a positive integer, got nothing"),
        (":timeout: -3\n", "key :timeout: expected a non-negative number of seconds, got -3"),
        (":timeout: true\n", "key :timeout: expected a non-negative number of seconds, got True"),
        (":queues:\n  - [a, -1]\n", "key :queues: queue 'a': weight must be a non-negative integer, got -1"),
        (":queues:\n  - [a, x]\n", "key :queues: queue 'a': weight must be a non-negative integer, got 'x'"),
        (":queues:\n  - [a, 1, 2]\n", "key :queues: expected name or [name, weight], got ['a', 1, 2]"),
        (":queues:\n  a: 1\n", "key :queues: expected name or [name, weight], got {'a': 1}"),
        (":queues: []\n", "key :queues: expected at least one queue, got an empty list"),
        (":labels:\n  a: 1\n", "key :labels: expected a list of labels, got {'a': 1}"),
        (":redis_url: http://nope\n", f"key :redis_url: {REDIS_SCHEMES}, got 'http://nope'"),
        ("production:\n  :concurrency: many\n", "key :concurrency (under production): expected a positive integer, got 'many'"),
        (":production: 5\n", "key :production: expected a mapping of options for the 'production' environment, got 5"),
    ],
)
def test_yaml_bad_values_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert error_of(["-C", path], {"RAILS_ENV": "production"}) == f"{path}: {message}"


def test_yaml_unknown_keys_are_ignored_even_with_odd_values(tmp_path: Path) -> None:
    path = write(tmp_path, ":require: [1, 2]\n:strict: maybe\n:scheduler: {a: b}\n:concurrency: 2\n")
    assert load_config(["-C", path], {}).concurrency == 2


def test_yaml_flag_and_env_still_win(tmp_path: Path) -> None:
    path = write(tmp_path, ":queues:\n  - a\n:concurrency: 5\n")
    config = load_config(["-C", path, "-q", "b"], {"FASTWORKER_CONCURRENCY": "6"})
    assert (config.queues, config.concurrency) == ((("b", 0),), 6)


def test_missing_file_names_the_option(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yml")
    assert error_of(["-C", missing]) == f"--config: no such file {missing!r}"
    assert error_of([], {"FASTWORKER_CONFIG": missing}) == f"FASTWORKER_CONFIG: no such file {missing!r}"


def test_invalid_yaml_and_wrong_top_level(tmp_path: Path) -> None:
    path = write(tmp_path, ":queues: [a\n")
    assert error_of(["-C", path]).startswith(f"{path}: invalid YAML: ")
    path = write(tmp_path, "- a\n- b\n", "list.yml")
    assert error_of(["-C", path]) == f"{path}: expected a mapping of options at the top level, got list"


# -- ERB --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "env", "rendered"),
    [
        ('<%= ENV["X"] %>', {"X": "7"}, "7"),
        ('<%= ENV["X"] %>', {}, ""),
        ("<%= ENV['X'] %>", {"X": "q"}, "q"),
        ('<%= ENV.fetch("X") %>', {"X": "8"}, "8"),
        ('<%= ENV.fetch("X", 5) %>', {}, "5"),
        ('<%= ENV.fetch("X", 5) %>', {"X": "9"}, "9"),
        ("<%= ENV.fetch('X', 'low') %>", {}, "low"),
        ('<%= ENV.fetch("X") { 5 } %>', {}, "5"),
        ('<%= ENV.fetch("X") { 5 } %>', {"X": "6"}, "6"),
        ('<%= ENV["X"] || 5 %>', {}, "5"),
        ('<%= ENV["X"] || 5 %>', {"X": ""}, ""),  # "" is truthy in Ruby
        ('<%= ENV["X"] || ENV["Y"] || "z" %>', {"Y": "y"}, "y"),
        ('<%= Integer(ENV.fetch("X", 5)) %>', {}, "5"),
        ('<%= Integer(ENV.fetch("X", 5)) %>', {"X": " 12 "}, "12"),
        ('<%= Integer(ENV["X"] || "0x1f") %>', {}, "31"),
        ('<%= Float(ENV.fetch("X", "2.5")) %>', {}, "2.5"),
        ('<%= ENV.fetch("X", "10").to_i %>', {}, "10"),
        ('<%= ENV["X"].to_i %>', {}, "0"),
        ('<%= (ENV["X"] || 3).to_s %>', {}, "3"),
        ("<%= 25 %> <%= 2.0 %> <%= nil %>|<%= true %> <%= :sym %> <%= 'it\\'s' %>", {}, "25 2.0 |true sym it's"),
        ('<%= "a\\tb" %>', {}, "a\tb"),
        ('<%# comment %>x', {}, "x"),
        ('<%%= not erb %>', {}, "<%= not erb %>"),
        ('a: <%= 1 -%>\nb: 2\n', {}, "a: 1b: 2\n"),
    ],
)
def test_erb_forms(template: str, env: dict[str, str], rendered: str) -> None:
    assert render_erb(template, "cfg.yml", env) == rendered


def test_erb_or_short_circuits_like_ruby() -> None:
    assert render_erb('<%= ENV["A"] || ENV.fetch("MISSING") %>', "cfg.yml", {"A": "a"}) == "a"


def test_erb_in_a_real_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ':concurrency: <%= ENV.fetch("SIDEKIQ_CONCURRENCY", 5) %>\n'
        ':timeout: <%= Integer(ENV.fetch("SIDEKIQ_TIMEOUT") { 8 }) %>\n'
        ':tag: <%= ENV["APP_TAG"] || "myapp" %>\n',
    )
    config = load_config(["-C", path], {"SIDEKIQ_CONCURRENCY": "12"})
    assert (config.concurrency, config.timeout, config.tag) == (12, 8.0, "myapp")


def test_erb_value_that_yaml_cannot_use_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, ':concurrency: <%= ENV["SIDEKIQ_CONCURRENCY"] %>\n')
    assert error_of(["-C", path], {}) == f"{path}: key :concurrency: expected a positive integer, got nothing"


@pytest.mark.parametrize(
    ("expression", "detail"),
    [
        ("<%= `whoami` %>", "cannot read '`whoami`'"),
        ('<%= File.read("/etc/passwd") %>', "'File' is not supported"),
        ('<%= ENV["X"].presence %>', "method .presence is not supported"),
        ('<%= "#{ENV["X"]}" %>', "string interpolation is not supported"),
        ('<%= ENV.fetch(KEY) %>', "the ENV key must be a string literal"),
        ('<%= ENV["X"] ? 1 : 2 %>', "cannot read '? 1 : 2'"),
        ("<%= 1 2 %>", "unexpected '2'"),
    ],
)
def test_erb_unsupported_expressions_name_file_and_expression(expression: str, detail: str) -> None:
    with pytest.raises(ConfigError) as info:
        render_erb(f":tag: {expression}\n", "config/sidekiq.yml", {})
    message = str(info.value)
    assert message.startswith(f"config/sidekiq.yml: unsupported ERB expression {expression}: {detail} (")
    assert "it does not run Ruby" in message


def test_erb_code_tags_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        render_erb("<% if true %>\n:concurrency: 5\n<% end %>\n", "config/sidekiq.yml", {})
    assert str(info.value).startswith("config/sidekiq.yml: unsupported ERB <% if true %> (")


def test_erb_missing_fetch_and_bad_integer_name_the_expression(tmp_path: Path) -> None:
    path = write(tmp_path, ':concurrency: <%= ENV.fetch("SIDEKIQ_CONCURRENCY") %>\n')
    assert error_of(["-C", path], {}) == (
        f"{path}: ERB expression <%= ENV.fetch(\"SIDEKIQ_CONCURRENCY\") %>: environment variable "
        "'SIDEKIQ_CONCURRENCY' is not set (ENV.fetch without a default)"
    )
    path = write(tmp_path, ':concurrency: <%= Integer(ENV["C"]) %>\n', "int.yml")
    assert error_of(["-C", path], {"C": "ten"}) == (
        f"{path}: ERB expression <%= Integer(ENV[\"C\"]) %>: invalid value for Integer(): 'ten'"
    )
    assert error_of(["-C", path], {}) == f"{path}: ERB expression <%= Integer(ENV[\"C\"]) %>: Integer() cannot convert nil"


def test_erb_uses_the_env_mapping_given_to_load_config(tmp_path: Path) -> None:
    path = write(tmp_path, ':queues:\n  - [<%= ENV.fetch("Q", "default") %>, <%= ENV.fetch("W", 1) %>]\n')
    assert load_config(["-C", path], {"Q": "hot", "W": "4"}).queues == (("hot", 4),)
    assert load_config(["-C", path], {}).queues == (("default", 1),)


# -- parity with Sidekiq 6.4.1's own CLI (Debian's ruby-sidekiq) -------------------------------------------

_SIDEKIQ_DUMP = """
require "json"
require "sidekiq/cli"
cli = Sidekiq::CLI.instance
cli.send(:setup_options, ARGV.dup)
o = Sidekiq.options
puts JSON.generate(queues: o[:queues], strict: o[:strict], concurrency: o[:concurrency], timeout: o[:timeout],
                   tag: o[:tag], labels: o[:labels], verbose: o[:verbose] ? true : false, environment: cli.environment)
"""


def _sidekiq_available() -> bool:
    if shutil.which("ruby") is None:
        return False
    probe = subprocess.run(["ruby", "-e", 'require "sidekiq/cli"'], capture_output=True, timeout=60)
    return probe.returncode == 0


PARITY_CASES = [
    (SIDEKIQ_YML, {}),
    (SIDEKIQ_YML, {"RAILS_ENV": "production"}),
    (SIDEKIQ_YML, {"APP_ENV": "staging", "RAILS_ENV": "production"}),
    (':concurrency: <%= ENV.fetch("C", 5) %>\n:timeout: <%= Integer(ENV["T"] || 9) %>\n'
     ":queues:\n  - [a, 1]\n  - [b, 1]\n  - c\ndevelopment:\n  :tag: dev\n", {"C": "3"}),
    ("queues:\n  - x\n  - y\nconcurrency: 2\n:production:\n  concurrency: 4\n", {"RACK_ENV": "production"}),
]


@pytest.mark.ruby
@pytest.mark.skipif(not _sidekiq_available(), reason="needs ruby with the sidekiq gem")
@pytest.mark.parametrize(("text", "env"), PARITY_CASES)
def test_yaml_parity_with_sidekiq_cli(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    path = write(tmp_path, text)
    script = tmp_path / "dump.rb"
    script.write_text(_SIDEKIQ_DUMP)
    ruby_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env}
    out = subprocess.run(
        ["ruby", str(script), "-C", path], capture_output=True, text=True, env=ruby_env, cwd=tmp_path, timeout=60
    )
    assert out.returncode == 0, out.stderr
    sidekiq = json.loads(out.stdout.strip().splitlines()[-1])

    config = load_config(["-C", path], env)
    assert list(config.expanded_queues) == sidekiq["queues"]
    assert config.strict is sidekiq["strict"]
    assert config.concurrency == sidekiq["concurrency"]
    assert config.timeout == sidekiq["timeout"]
    assert config.tag == (sidekiq["tag"] or "")
    assert list(config.labels) == sidekiq["labels"]
    assert (config.log_level == "debug") is sidekiq["verbose"]
    assert (config.environment or "development") == sidekiq["environment"]


# -- discovery of config/sidekiq.yml (Sidekiq 6.4.1 cli.rb setup_options) ---------------------------------


def test_config_file_is_discovered_under_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "sidekiq.yml.erb").write_text(":concurrency: 3\n")
    monkeypatch.chdir(tmp_path)
    config = load_config([], {})
    assert config.concurrency == 3 and config.config_file == "./config/sidekiq.yml.erb"
    (tmp_path / "config" / "sidekiq.yml").write_text(":concurrency: 4\n")  # the plain name wins
    assert load_config([], {}).concurrency == 4
    assert load_config(["-C", write(tmp_path, ":concurrency: 7\n", "other.yml")], {}).concurrency == 7


def test_config_file_is_discovered_under_rails_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = tmp_path / "app"
    (app / "config").mkdir(parents=True)
    (app / "config" / "sidekiq.yml").write_text(":queues:\n  - [hot, 2]\nproduction:\n  :concurrency: 9\n")
    monkeypatch.chdir(tmp_path)
    for flag in ("-r", "--rails-root", "--require"):
        config = load_config([flag, str(app), "-e", "production"], {})
        assert config.queues == (("hot", 2),) and config.concurrency == 9
        assert config.environment == "production"
    assert load_config([], {"RAILS_ROOT": str(app)}).queues == (("hot", 2),)
    # -r naming a file (Sidekiq: "require this file") leaves the root at the working directory
    assert load_config(["-r", str(app / "config" / "sidekiq.yml")], {}).queues == (("default", 0),)


def test_removed_sidekiq_flags_warn_and_carry_on(capsys: pytest.CaptureFixture[str]) -> None:
    from fastworker.config import parse_args, removed_flag_warnings

    ns = parse_args(["-d", "-L", "log/sidekiq.log", "-P", "tmp/pids/sidekiq.pid", "-c", "3"])
    notices = removed_flag_warnings(ns)
    assert [n.split(" ", 1)[0] for n in notices] == ["-d/--daemon", "-L/--logfile", "-P/--pidfile"]
    assert all("removed in Sidekiq 6.0" in n for n in notices)
    assert load_config(["-L", "x.log", "-c", "3"], {}).concurrency == 3


_SIDEKIQ_ARGV_DUMP = """
require "json"
require "sidekiq/cli"
cli = Sidekiq::CLI.instance
begin
  cli.send(:setup_options, ARGV.dup)
rescue ArgumentError => e
  puts JSON.generate(error: e.message)
  exit 0
end
o = Sidekiq.options
puts JSON.generate(queues: o[:queues], strict: o[:strict], concurrency: o[:concurrency], timeout: o[:timeout],
                   tag: o[:tag], environment: cli.environment, config_file: o[:config_file])
"""

ARGV_PARITY_CASES = [
    ["-q", "critical,3", "-q", "default"],
    ["-q", "critical,2", "-q", "default,1", "-q", "low"],
    ["-q", "a", "-q", "b", "-c", "4", "-t", "9", "-g", "tagged"],
    ["-q", "a", "-q", "a"],
    ["-q", "a,2", "-q", "a,1"],
    ["-r", "app", "-e", "production"],
    ["-r", "app"],
    [],
    ["-d", "-L", "x.log", "-P", "x.pid", "-q", "z"],
]


@pytest.mark.ruby
@pytest.mark.skipif(not _sidekiq_available(), reason="needs ruby with the sidekiq gem")
@pytest.mark.parametrize("argv", ARGV_PARITY_CASES)
def test_cli_forms_and_discovery_parity_with_sidekiq_cli(tmp_path: Path, argv: list[str]) -> None:
    """The same argv in the same folder, read by Sidekiq 6.4.1's own CLI and by fastworker."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "sidekiq.yml").write_text(":concurrency: 2\n:queues:\n  - top\n")
    (tmp_path / "app" / "config").mkdir(parents=True)
    (tmp_path / "app" / "config" / "sidekiq.yml.erb").write_text(
        ":timeout: <%= 7 %>\n:queues:\n  - [x, 2]\n  - y\nproduction:\n  :concurrency: 6\n")
    script = tmp_path / "dump.rb"
    script.write_text(_SIDEKIQ_ARGV_DUMP)
    out = subprocess.run(["ruby", str(script), *argv], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    sidekiq = json.loads(out.stdout.strip().splitlines()[-1])
    import os

    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        if "error" in sidekiq:
            assert error_of(argv).endswith(sidekiq["error"])
            return
        config = load_config(argv, {})
    finally:
        os.chdir(old)
    assert list(config.expanded_queues) == sidekiq["queues"]
    assert config.strict is sidekiq["strict"]
    assert config.concurrency == (sidekiq["concurrency"] or 10)
    assert config.timeout == (sidekiq["timeout"] or 25)
    assert config.tag == (sidekiq["tag"] or "")
    assert (config.environment or "development") == sidekiq["environment"]
    assert config.config_file == sidekiq["config_file"]


def test_an_erb_integer_of_a_float_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    """erb.py used math and Callable without importing them: Integer(5.5) crashed with NameError."""
    path = tmp_path / "sidekiq.yml"
    path.write_text(":concurrency: <%= Integer(5.5) %>\n")
    config = load_config(["-C", str(path)], {})
    assert config.concurrency == 5
