"""cometd-bridge: forwards CometD (Bayeux) streams into RabbitMQ."""

from importlib.metadata import PackageNotFoundError, version


try:
    __version__ = version("cometd-bridge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
