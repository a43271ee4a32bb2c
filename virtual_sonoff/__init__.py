"""A virtual Sonoff: an emulator of the eWeLink device side, for tests and demos.

Never imported by the integration and never shipped through HACS.
"""
