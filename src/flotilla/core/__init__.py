"""Pure logic: no database, no I/O, no clocks. Everything here takes plain data and
returns plain data, so it can be unit-tested and benchmarked on its own."""
