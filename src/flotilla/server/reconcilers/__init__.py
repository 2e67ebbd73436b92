"""Level-triggered background loops: each compares desired with actual state and
converges, step by idempotent step, woken early by events and otherwise on a timer."""
