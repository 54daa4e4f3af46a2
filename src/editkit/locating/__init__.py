"""Locating where a model keeps a fact: causal tracing (ROME, Meng et al. 2022, section 2) in ``trace.py`` and
its average over many known facts in ``average.py``; ``output.py`` writes what ``editkit trace`` shows, knowledge
neurons (Dai et al. 2022, found by ``editors/neurons.py``, which the KN editor edits) included. Sits above
``editors/``: it uses ``editors/passes.py``'s ``replay_prefix`` and ``editors/neurons.py``, never an editor class."""
