"""The server's former module, kept so that code written against it goes on working: the server is the package
`charmt.server` now."""

from .server import ServedModel, create_app, load_models

__all__ = ["ServedModel", "create_app", "load_models"]
