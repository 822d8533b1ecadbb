"""Configuration: frozen settings, loaded from defaults < YAML file < environment."""

from config.errors import ConfigError, Problem
from config.loader import LoadedSettings, load_settings, read_secret
from config.settings import (
    ApiSettings,
    BackendSettings,
    CacheOptions,
    ConnectionOptions,
    CpuOptions,
    DatabaseOptions,
    DetectionSettings,
    EngineSettings,
    MemoryOptions,
    Mode,
    SamplerSettings,
    Settings,
    StateSettings,
    StrategiesSettings,
)

__all__ = [
    "ApiSettings",
    "BackendSettings",
    "CacheOptions",
    "ConfigError",
    "ConnectionOptions",
    "CpuOptions",
    "DatabaseOptions",
    "DetectionSettings",
    "EngineSettings",
    "LoadedSettings",
    "MemoryOptions",
    "Mode",
    "Problem",
    "SamplerSettings",
    "Settings",
    "StateSettings",
    "StrategiesSettings",
    "load_settings",
    "read_secret",
]
