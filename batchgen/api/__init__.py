"""The provider's HTTP API: errors, answer parsing, URL and key policy, the request path."""
