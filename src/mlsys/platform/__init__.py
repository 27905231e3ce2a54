"""Shared serving and operations: server factory, settings, registry, monitoring."""
