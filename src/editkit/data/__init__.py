"""Dataset loaders: every benchmark becomes a list of :class:`~editkit.edits.EditCase`."""

from editkit.data.demo import demo_cases
from editkit.data.formats import FORMATS, Dataset, load_cases

__all__ = ["FORMATS", "Dataset", "demo_cases", "load_cases"]
