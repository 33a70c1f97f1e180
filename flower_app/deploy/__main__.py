"""``python -m flower_app.deploy``: the deployment kit (:mod:`flower_app.deploy.cli`)."""

from flower_app.deploy.cli import main

raise SystemExit(main())
