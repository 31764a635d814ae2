"""Client frames: the codec, the router that turns frames into actions, version shapes."""
