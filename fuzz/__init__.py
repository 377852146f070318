"""Coverage-guided fuzzing of the parsers that see untrusted bytes (docs/SECURITY.md)."""
