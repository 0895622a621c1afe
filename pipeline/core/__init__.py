"""Core: atomic io, recipes and config, the part registry, hashing (fingerprints, revisions, code versions), fault injection."""
