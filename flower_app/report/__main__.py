"""``python -m flower_app.report``: charts of run directories (:mod:`flower_app.report.write`)."""

from flower_app.report.write import main

raise SystemExit(main())
