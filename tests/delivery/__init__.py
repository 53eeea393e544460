"""Tests of the delivery domain: the send API, connectors and the providers they talk to."""
