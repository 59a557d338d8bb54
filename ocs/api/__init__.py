"""The REST API (``/api/v1``) and its bearer tokens."""
