"""OCS/AAA: online charging system and AAA server."""

__version__ = "0.1.0"


def build_version() -> str:
    """The installed distribution's version ("unknown" in a source tree never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ocs")
    except PackageNotFoundError:
        return "unknown"
