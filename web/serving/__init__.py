"""Serving: what a front door does with a parsed request, between its router and the jobs."""
