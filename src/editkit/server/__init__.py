"""The HTTP server (``editkit serve``): an OpenAI-compatible API over one :class:`~editkit.service.EditService`,
with edits added, listed, explained and rolled back by people holding write tokens.

* :mod:`editkit.server.tokens`: named bearer tokens with roles, stored hashed, checked in constant time;
* :mod:`editkit.server.metrics`: request counters and latency histograms in Prometheus' text format;
* :mod:`editkit.server.batcher`: concurrent queries share one generation pass;
* :mod:`editkit.server.journal`: the durable journal of weight edits, re-applied in order on restart;
* :mod:`editkit.server.app`: the FastAPI application and :func:`~editkit.server.app.serve`.

This package needs the ``serve`` extra (``pip install 'editkit[serve]'``); nothing outside it imports it, so
editkit works without FastAPI.
"""
