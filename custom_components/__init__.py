"""Custom integrations (package marker so tests can import them)."""
