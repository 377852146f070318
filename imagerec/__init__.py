"""imagerec, the installable package's public face: ``imagerec.client`` is the Python client
of the HTTP API (the service itself lives in ``app``, ``agents``, ``web`` and ``functions``)."""

from imagerec.client import AsyncClient, Client, ImagerecError

__all__ = ["AsyncClient", "Client", "ImagerecError"]
