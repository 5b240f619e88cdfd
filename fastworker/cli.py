"""The ``fastworker`` command.

Duties:
1. Turn argv + environment (+ Sidekiq's own answer from the sidecar, or the ``-C`` / discovered file)
   into a ``Config`` (fastworker.config, fastworker.sidekiq_config): a first pass without the file learns
   how to ask; the second takes the answer, or reads the file itself when there is none.
2. Answer ``--help`` and ``--version`` (exit 0), and report a bad option as
   ``fastworker: error: <message naming the option>`` on stderr (exit 2, like argparse).
3. Refuse to start (exit 2, naming the variable) with a bad sidecar secret, or with the HTTP
   endpoints on a non-loopback address while no secret is set (the sidecar's rule, signing.py).
4. Hand the Config to ``fastworker.launcher.run`` and return its exit code.

The launcher (asyncio, uvloop, redis) is imported only after the configuration is valid,
so ``--help`` and usage errors stay fast and never depend on those packages.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence

from fastworker import __version__, sidekiq_config, signing
from fastworker.config import ConfigError, build_parser, config_from_args, parse_args, removed_flag_warnings

USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Console entry point (setuptools wraps it as ``sys.exit(main())``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if env is None else env
    try:
        ns = parse_args(args)
        if ns.help:
            sys.stdout.write(build_parser().format_help())
            return 0
        if ns.version:
            print(f"fastworker {__version__}")
            return 0
        for notice in removed_flag_warnings(ns):
            print(f"fastworker: warning: {notice}", file=sys.stderr)
        secret = signing.load_secret(environ)
        first = config_from_args(ns, environ, read_file=False)
        answer = sidekiq_config.ask(first.sidekiq_config, first.sidecar_url, first.config_wait, first.rails_root,
                                    first.environment, environ, signing.Signer(secret) if secret else None)
        sources: dict[str, str] = {}
        config = config_from_args(ns, environ, answer, sources_out=sources)
        if secret is None and config.http_port and not signing.is_loopback(config.http_host):
            raise ConfigError(f"--http-host {config.http_host}: a non-loopback address needs "
                              f"{signing.SECRET_ENV} (or {signing.SECRET_FILE_ENV}) to be set, "
                              f"or bind 127.0.0.1")
    except (ConfigError, signing.SecretError, sidekiq_config.SidecarConfigError) as exc:
        print(f"fastworker: error: {exc}", file=sys.stderr)
        return USAGE_ERROR

    # Heavy imports (asyncio, uvloop, redis) only once the configuration is known to be good.
    launcher = importlib.import_module("fastworker.launcher")
    code = launcher.run(config, sources)
    return 0 if code is None else int(code)
