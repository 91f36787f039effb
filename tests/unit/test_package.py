"""The package imports and exposes its version."""

import bridge


def test_version_is_a_string() -> None:
    assert isinstance(bridge.__version__, str)
    assert bridge.__version__.count(".") >= 2
