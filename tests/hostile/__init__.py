"""A misbehaving HTTP upstream for hostile-upstream tests."""
