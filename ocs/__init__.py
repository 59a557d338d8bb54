"""OCS/AAA: online charging system and AAA server."""

__version__ = "0.1.0"
