"""``python -m appliance`` is the ``face-appliance`` command."""

from .cli import main

raise SystemExit(main())
