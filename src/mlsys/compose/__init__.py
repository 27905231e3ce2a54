"""Composition: what puts the domains and the platform together (the server's app, the CLI's
cross-domain commands, the local stack, the demo, the load test). It may import anything;
nothing below it imports it (`make lint` checks the layers with import-linter)."""
