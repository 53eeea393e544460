"""Tidings: one server that moves messages between people, apps and channels."""

__version__ = "0.1.0"
