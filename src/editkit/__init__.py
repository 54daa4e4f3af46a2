"""editkit: edit what language models know, and measure editors honestly."""

__version__ = "0.1.0"
