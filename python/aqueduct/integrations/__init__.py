"""Web framework integrations: ``aqueduct.integrations.aiohttp`` and
``aqueduct.integrations.fastapi``."""
