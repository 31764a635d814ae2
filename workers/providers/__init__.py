"""OpenAI-compatible chat providers (Kimi/Moonshot, GLM/ZhipuAI)."""
