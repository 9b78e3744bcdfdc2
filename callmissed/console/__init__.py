"""The operator console at /console and the admin JSON endpoints it reads (docs/console.md)."""

__all__: list[str] = []
