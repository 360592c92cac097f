"""Revocation events: the durable log in the store, fanned out to subscribers."""
