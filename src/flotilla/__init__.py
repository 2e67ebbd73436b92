"""Flotilla: an open-source control plane for GPU compute."""

__version__ = "0.1.0"
