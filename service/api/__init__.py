"""The FastAPI app: `create_app(settings, store)` mounts one router per resource."""

from service.api.app import create_app

__all__ = ["create_app"]
