"""Prometheus metrics of the whole fleet: counted into Redis, exposed by any web process."""
