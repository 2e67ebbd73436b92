"""Compute backends behind one interface (`base.ComputeBackend`)."""
