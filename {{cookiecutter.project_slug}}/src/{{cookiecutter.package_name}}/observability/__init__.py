"""Logs, metrics and traces of the service, one module per signal."""
