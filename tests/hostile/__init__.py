"""Clients that misbehave on purpose, for the hostile test suites."""
