"""The web demo and inference service (`busseg serve`)."""

from busseg.serve.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
