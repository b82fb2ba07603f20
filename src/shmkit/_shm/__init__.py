"""Each object's shared-memory format and protocol (below the public classes)."""
