"""Which providers are configured, from their API keys and base URLs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

__all__ = ["PROVIDERS", "ProviderConfig", "provider_configs"]


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    key_vars: tuple[str, ...]
    url_var: str
    default_url: str


PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec(
        "kimi", ("KIMI_API_KEY", "MOONSHOT_API_KEY"), "KIMI_API_URL", "https://api.moonshot.ai/v1"
    ),
    ProviderSpec(
        "glm", ("GLM_API_KEY", "ZHIPUAI_API_KEY"), "GLM_API_URL", "https://api.z.ai/api/paas/v4"
    ),
)


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    api_key: str = dataclasses.field(repr=False)
    base_url: str
    key_vars: tuple[str, ...]

    @property
    def configured(self) -> bool:
        return bool(self.api_key)


def _real_key(value: str | None) -> str:
    """A key, or '' for unset values and the placeholders copied from example .env files."""
    value = (value or "").strip()
    lowered = value.lower()
    if (
        not value
        or lowered.startswith("your_")
        or lowered.endswith("_here")
        or lowered
        in (
            "changeme",
            "xxx",
            "<key>",
        )
    ):
        return ""
    return value


def provider_configs(environ: Mapping[str, str]) -> dict[str, ProviderConfig]:
    """Every known provider with its key (possibly empty) and base URL."""
    configs: dict[str, ProviderConfig] = {}
    for spec in PROVIDERS:
        key = next((k for k in (_real_key(environ.get(v)) for v in spec.key_vars) if k), "")
        url = (environ.get(spec.url_var) or spec.default_url).strip().rstrip("/")
        configs[spec.name] = ProviderConfig(spec.name, key, url, spec.key_vars)
    return configs
