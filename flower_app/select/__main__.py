"""``python -m flower_app.select``: model and hyperparameter selection (:mod:`flower_app.select.choose`)."""

from flower_app.select.choose import main

raise SystemExit(main())
