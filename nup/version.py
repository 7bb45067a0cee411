"""The package version: part of every run's cache key (``nup.training.cache``), so results cached by one
version are never served to another.  Bump it when a change alters any run's numbers."""

__version__ = "0.2.1"
