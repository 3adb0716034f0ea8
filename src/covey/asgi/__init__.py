"""covey in an ASGI application (Starlette, FastAPI): lifespan, errors as HTTP, probes."""
