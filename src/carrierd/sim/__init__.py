"""Carrier simulators used by tests, benchmarks and `make run`."""
