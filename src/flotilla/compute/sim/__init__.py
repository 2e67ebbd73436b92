"""The `sim` provider: a simulated GPU cloud (catalog, regions, InfiniBand
topology) for development, tests, scale benchmarks and what-if planning."""
