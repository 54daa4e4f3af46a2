"""Locating where a model keeps a fact: causal tracing (ROME, Meng et al. 2022, section 2) in ``trace.py`` and
its average over many known facts in ``average.py``; knowledge neurons by integrated gradients (Dai et al. 2022)
in ``neurons.py``. The KN editor (``editors/kn.py``) edits the neurons ``neurons.py`` finds."""
