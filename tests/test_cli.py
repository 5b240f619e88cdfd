"""The ``fastworker`` command: exit codes, messages naming the option, --help, --version, hand-off."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import fastworker
from fastworker.cli import main
from fastworker.config import OPTIONS, Config

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment minus anything fastworker would read."""
    read = {"REDIS_URL", "REDIS_PROVIDER", "APP_ENV", "RAILS_ENV", "RACK_ENV", "RAILS_MAX_THREADS"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTWORKER_") and k not in read}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "100"
    env.update(extra)
    return env


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fastworker", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean_env(**env),
        timeout=60,
    )


# -- as a subprocess --------------------------------------------------------------------------------------


def test_bad_flag_value_exits_2_and_names_the_option() -> None:
    out = run("--concurrency", "abc")
    assert out.returncode == 2
    assert out.stderr == "fastworker: error: --concurrency: expected a positive integer, got 'abc'\n"
    assert out.stdout == ""


def test_bad_short_flag_value() -> None:
    out = run("-c", "0")
    assert out.returncode == 2
    assert out.stderr == "fastworker: error: --concurrency: expected a positive integer, got '0'\n"


def test_bad_env_value_names_the_variable() -> None:
    out = run(FASTWORKER_HTTP_PORT="http")
    assert out.returncode == 2
    assert out.stderr == (
        "fastworker: error: FASTWORKER_HTTP_PORT: expected a port number 0-65535 (0 disables), got 'http'\n"
    )


def test_bad_queue_syntax() -> None:
    out = run("-q", "critical:high")
    assert out.returncode == 2
    assert out.stderr == (
        "fastworker: error: --queues: queue 'critical': weight must be a non-negative integer, got 'high'\n"
    )


def test_missing_config_file_names_config(tmp_path: Path) -> None:
    missing = tmp_path / "sidekiq.yml"
    out = run("-C", str(missing))
    assert out.returncode == 2
    assert out.stderr == f"fastworker: error: --config: no such file {str(missing)!r}\n"


def test_bad_yaml_value_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "sidekiq.yml"
    path.write_text(":concurrency: lots\n")
    out = run("-C", str(path))
    assert out.returncode == 2
    assert out.stderr == f"fastworker: error: {path}: key :concurrency: expected a positive integer, got 'lots'\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--concurrency"], "argument -c/--concurrency: expected one argument"),
        (["--log-format", "xml"], "--log-format: expected one of json, text, got 'xml'"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    out = run(*args)
    assert out.returncode == 2
    assert out.stderr == f"fastworker: error: {message}\n"


def test_help_lists_every_option_and_env_var() -> None:
    out = run("--help")
    assert out.returncode == 0
    assert out.stderr == ""
    assert out.stdout.startswith("usage: fastworker ")
    flat = " ".join(out.stdout.split())  # argparse wraps lines; env var names may not split, flags must not
    for opt in OPTIONS:
        for flag in opt.flags:
            assert flag in flat, flag
        for var in opt.env_vars:
            assert var in flat, var
    for flag in ("-v", "--verbose", "-V", "--version", "-h", "--help"):
        assert flag in flat
    assert "default redis://127.0.0.1:6379/0" in flat
    assert ("first source wins: fastworker flags > FASTWORKER_* variables > Sidekiq's answer (--sidekiq-config: "
            "the sidecar's GET /config" in flat)
    assert "without an answer: -C or config/sidekiq.yml(.erb) under the app root (-r)" in flat
    for flag in ("-L", "--logfile", "-P", "--pidfile", "-d", "--daemon"):
        assert flag in flat


def test_short_help() -> None:
    out = run("-h")
    assert out.returncode == 0
    assert "--sidecar-connect-timeout SECONDS" in out.stdout


def test_version() -> None:
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout == f"fastworker {fastworker.__version__}\n"
    assert fastworker.__version__ == "0.1.0"
    assert run("-V").stdout == "fastworker 0.1.0\n"


def test_help_and_errors_do_not_import_the_runtime() -> None:
    code = (
        "import sys\n"
        "from fastworker.cli import main\n"
        "codes = [main(['--concurrency', 'abc'], {}), main(['--help'], {}), main(['--version'], {})]\n"
        "heavy = sorted(m for m in ('asyncio', 'uvloop', 'redis', 'aiohttp', 'fastworker.launcher') if m in sys.modules)\n"
        "print('RESULT', codes, heavy, file=sys.stderr)\n"
    )
    assert python_result(code) == "RESULT [2, 0, 0] []"


def test_the_runtime_never_imports_aiohttp() -> None:
    # importing aiohttp costs ~10 MB of PSS (http_server.py, sidecar_http.py): the whole-machine
    # memory goal counts it, so none of the modules the worker starts with may pull it in
    code = (
        "import sys, fastworker.launcher, fastworker.http_server, fastworker.sidecar_http\n"
        "print('RESULT', sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp'), file=sys.stderr)\n"
    )
    assert python_result(code) == "RESULT []"


def python_result(code: str) -> str:
    """The last line ``code`` writes to stderr, run in a fresh interpreter (what it imported is its own)."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=clean_env(), timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stderr.splitlines()[-1]


# -- in process: the hand-off to the launcher --------------------------------------------------------------


@pytest.fixture
def fake_launcher(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    received: list[Config] = []
    module = types.ModuleType("fastworker.launcher")
    state = types.SimpleNamespace(received=received, code=0)

    def run(config: Config, sources: dict[str, str] | None = None) -> int | None:
        received.append(config)
        return state.code

    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fastworker.launcher", module)
    return state


def test_main_passes_the_config_to_the_launcher_and_returns_its_code(fake_launcher: types.SimpleNamespace) -> None:
    fake_launcher.code = 3
    code = main(["-q", "critical:2,default", "-c", "4", "--label", "x"], {"FASTWORKER_TAG": "blue"})
    assert code == 3
    (config,) = fake_launcher.received
    assert config.queues == (("critical", 2), ("default", 0))
    assert (config.concurrency, config.labels, config.tag) == (4, ("x",), "blue")


def test_main_treats_a_none_exit_code_as_success(fake_launcher: types.SimpleNamespace) -> None:
    fake_launcher.code = None
    assert main([], {}) == 0
    assert fake_launcher.received == [Config()]


def test_main_reads_sys_argv_and_os_environ_by_default(
    fake_launcher: types.SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["fastworker", "--concurrency", "6"])
    monkeypatch.setenv("FASTWORKER_TIMEOUT", "3")
    assert main() == 0
    assert (fake_launcher.received[0].concurrency, fake_launcher.received[0].timeout) == (6, 3.0)


def test_main_config_error_never_reaches_the_launcher(
    fake_launcher: types.SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--timeout", "-1"], {}) == 2
    assert fake_launcher.received == []
    captured = capsys.readouterr()
    assert captured.err == "fastworker: error: --timeout: expected a non-negative number of seconds, got '-1'\n"
    assert captured.out == ""


def test_main_as_console_script_exit_code(fake_launcher: types.SimpleNamespace) -> None:
    # setuptools' wrapper is sys.exit(main()): the int return value becomes the process status.
    with pytest.raises(SystemExit) as info:
        sys.exit(main(["-c", "x"], {}))
    assert info.value.code == 2
    fake_launcher.code = 0
    with pytest.raises(SystemExit) as info:
        sys.exit(main(["--version"], {}))
    assert info.value.code == 0
    assert fake_launcher.received == []
