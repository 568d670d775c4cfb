"""The HTTP API (OpenAI and Anthropic wire formats), served in rank 0's process (no MLX here)."""

from refserver.api.app import create_app
from refserver.api.settings import ApiSettings, SettingsError, model_aliases_for

__all__ = ["ApiSettings", "SettingsError", "create_app", "model_aliases_for"]
