"""The fake provider: an ASGI app speaking the API, its settings, its PNG bytes."""
