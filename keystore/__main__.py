"""``python -m keystore``: the ``mls-keystore`` command."""

from keystore.cli import main

raise SystemExit(main())
