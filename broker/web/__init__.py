"""The web front: the aiohttp app factory, its guards and one connection per client."""
