"""Sweeps (``editkit sweep CONFIG.yaml``): a grid of evaluation runs (methods x models x case orderings x seeds x
protocols) expanded into ``editkit eval`` runs (:mod:`editkit.sweep.grid`), executed as Ray tasks, batch runs
sharded by case range and merged into one results file (:mod:`editkit.sweep.merge`,
:mod:`editkit.sweep.execute`). Importing this package imports neither Ray nor torch."""
