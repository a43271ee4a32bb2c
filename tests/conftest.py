"""Shared fixtures.

`custom_components.sonoff_ota` must be imported before the `hass` fixture runs:
phcc's testing_config has its own `custom_components` package that would
otherwise shadow ours ("Integration not found").
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

import custom_components.sonoff_ota  # noqa: F401  (must come first, see above)


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(
    enable_custom_integrations: None,
) -> Generator[None]:
    """Let HA load the integration from custom_components/."""
    yield
