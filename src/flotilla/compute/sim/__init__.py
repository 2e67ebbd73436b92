"""The `sim` provider: a simulated GPU cloud (catalog, regions, InfiniBand
topology) for development, tests, scale benchmarks and what-if planning. Its catalog
of instance types is pure data in `core/catalog.py`, where the fleet recipe reads it."""
