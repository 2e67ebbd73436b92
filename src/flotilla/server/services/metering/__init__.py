"""Metering: per-second usage rows, the usage reports built from them, and
budgets."""
