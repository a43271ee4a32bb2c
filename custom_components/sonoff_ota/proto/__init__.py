"""Protocol code: plain asyncio/aiohttp, no Home Assistant imports.

The Home Assistant side (config flow, views, entities) is a thin layer that
drives these modules, the way `tasmota` sits on hatasmota.
"""
