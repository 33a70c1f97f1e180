"""Charts of run directories: ``python -m flower_app.report RUN_DIR [RUN_DIR ...] [--out DIR]``.

:mod:`~flower_app.report.rundata` reads a run directory into plain series,
:mod:`~flower_app.report.charts` draws them, :mod:`~flower_app.report.page` lays them out
as one self-contained HTML page and :mod:`~flower_app.report.write` writes it all.
"""
