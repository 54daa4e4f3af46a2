"""Evaluation: metrics, protocols, the results format and reports. Talks only to LanguageModel, Editor, EditHandle
and the routing interfaces of :mod:`editkit.editors.routing`, never to a specific method."""
