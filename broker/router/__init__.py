"""Client frames: the codec, the op dialect's frames, the router that acts on frames."""
