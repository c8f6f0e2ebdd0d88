"""Peers that misbehave on purpose, for the hostile test suites: a raw HTTP/2 client
(`h2client`) and an HTTP upstream on raw sockets (`upstream`)."""
