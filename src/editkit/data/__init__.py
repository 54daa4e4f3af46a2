"""Dataset loaders: every benchmark becomes a list of :class:`~editkit.edits.EditCase`."""

from editkit.data.demo import demo_cases
from editkit.data.formats import FORMATS, Dataset, editkit_record, load_cases

__all__ = ["FORMATS", "Dataset", "demo_cases", "editkit_record", "load_cases"]
