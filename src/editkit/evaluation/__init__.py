"""Evaluation: metrics and protocols. Talks only to LanguageModel, Editor and EditHandle."""
