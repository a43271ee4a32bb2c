"""Tests for sonoff_ota."""
