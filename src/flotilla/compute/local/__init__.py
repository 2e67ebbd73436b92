"""The `local` backend: tasks run as real processes on this machine."""

from flotilla.compute.local.backend import LocalBackend

__all__ = ["LocalBackend"]
