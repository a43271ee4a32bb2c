"""Tests of the virtual Sonoff itself."""
