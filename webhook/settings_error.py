"""The one error type of the webhook settings (webhook/settings.py, settings_relay.py, settings_load.py)."""

from __future__ import annotations


class SettingsError(ValueError):
    """A settings value is wrong: `field` names it (dotted/indexed), the message says what is accepted."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"settings {field_name}: {message}")
        self.field = field_name
        self.detail = message
