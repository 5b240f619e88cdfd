"""``python -m fastworker``: the same as the ``fastworker`` console script."""

from fastworker.cli import main

raise SystemExit(main())
