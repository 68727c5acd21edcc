"""``python -m aqueduct serve module:attr``: see :mod:`aqueduct._cli`."""

from aqueduct._cli import main

raise SystemExit(main())
