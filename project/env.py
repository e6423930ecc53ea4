"""One object that reads the process environment, with clear errors for bad values."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from django.core.exceptions import ImproperlyConfigured

Text = str  # the methods below shadow the builtins inside the class
Number = float

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Env:
    """Typed access to environment variables; every bad value names its variable."""

    def __init__(self, environ: Mapping[Text, Text] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def str(self, name: Text, default: Text | None = None, *, hint: Text = "") -> Text:
        value = self._environ.get(name)
        if value is None or value == "":
            if default is None:
                raise ImproperlyConfigured(f"{name} must be set" + (f" ({hint})" if hint else ""))
            return default
        return value

    def optional(self, name: Text) -> Text | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def bool(self, name: Text, default: bool = False) -> bool:
        value = self._environ.get(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")

    def int(self, name: Text, default: int, *, minimum: int | None = None) -> int:
        return int(self._number(name, default, int, "an integer", minimum))

    def float(self, name: Text, default: float, *, minimum: float | None = None) -> float:
        return float(self._number(name, default, float, "a number", minimum))

    def _number(
        self, name: Text, default: Number, cast: type, kind: Text, minimum: Number | None
    ) -> Number:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return default
        try:
            number = cast(value)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name} must be {kind}, got {value!r}") from exc
        if not math.isfinite(number):
            raise ImproperlyConfigured(f"{name} must be a finite number, got {value!r}")
        if minimum is not None and number < minimum:
            raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
        return number

    def list(self, name: Text, default: list[Text]) -> list[Text]:
        value = self._environ.get(name)
        if value is None:
            return default
        return [item.strip() for item in value.split(",") if item.strip()]


env = Env()
