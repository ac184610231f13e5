"""Settings: one dict, overridable, checked."""

from __future__ import annotations

import pytest

from avm.memory import DEFAULT_SETTINGS, ContentStore
from avm.memory.settings import resolve_settings


def test_defaults_are_read_only_and_complete() -> None:
    with pytest.raises(TypeError):
        DEFAULT_SETTINGS["hot_bytes"] = 1  # type: ignore[index]
    assert resolve_settings({}) == dict(DEFAULT_SETTINGS)


def test_override() -> None:
    store = ContentStore(hot_bytes=1234, dict_enabled=False)
    assert store.settings["hot_bytes"] == 1234
    assert store.settings["dict_enabled"] is False
    assert store.settings["warm_bytes"] == DEFAULT_SETTINGS["warm_bytes"]


def test_unknown_setting_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="hot_byte"):
        ContentStore(hot_byte=10)


@pytest.mark.parametrize("name,value", [
    ("hot_bytes", -1), ("hot_bytes", "big"), ("compress_level", 0), ("compress_level", 30),
    ("sync", 1), ("write_batch_count", 0), ("hot_bytes", True),
])
def test_bad_values_are_value_errors(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        ContentStore(**{name: value})
