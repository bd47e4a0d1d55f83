"""The gate daemon: lanes, decisions, PLC control, hub link, CLI."""

__version__ = "0.1.0"

__all__ = ["__version__"]
