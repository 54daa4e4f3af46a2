"""Dataset loaders: every benchmark becomes a list of :class:`~editkit.edits.EditCase`."""

from editkit.data.counterfact import load_counterfact
from editkit.data.demo import demo_cases

__all__ = ["demo_cases", "load_counterfact"]
