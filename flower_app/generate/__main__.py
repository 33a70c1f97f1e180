"""``python -m flower_app.generate``: generation (:mod:`flower_app.generate.cli`)."""

from flower_app.generate.cli import main

raise SystemExit(main())
