"""Connectors: one module a provider, each implementing `base.ConnectorType`."""
