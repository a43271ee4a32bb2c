"""Protocol code: plain asyncio/aiohttp, no Home Assistant imports.

The Home Assistant side (config flow, views, entities) is a thin layer that
drives these modules, the way `tasmota` sits on hatasmota.

The modules, in the order a flash's data flows through them:

What the user gives and what gets flashed
- wifi: validation of the home Wi-Fi settings the device is given.
- firmware_choice: the user's choice of Tasmota image (`FirmwareChoice`, `FirmwareSource`).
- sonota_files: SonOTA's files at the pinned commit (names, sha256), the only images known offline.
- firmware_sources: where each image comes from (URLs, pins, release numbers, `redact_url`).
- firmware_download: `FirmwareDownloader`, one image into memory (cap, timeouts, single-flight).
- firmware_image: image roles, limits, pinned known images and validation (pure functions).
- firmware_cache: `FirmwareCache`, verified images on disk by sha256 and the URL index.
- firmware_errors: why an image could not be handed out (`FirmwareErrorCode`, errors).
- firmware_store: `FirmwareStore`, the policy: which source, fallback and check per image.
- flash_stages: the flash as a state machine (`Stage`, `FlashTracker`) every path reports to.

Moving the host's Wi-Fi onto the device's access points (setup mode)
- host_wifi_types: what every hop shares: error codes, backends, target, plan, outcomes.
- host_wifi_targets: the APs a hop joins (ITEAD-…, FinalStage, Tasmota's) and our address there.
- host_wifi_hop: `WifiHop`, the hop every backend is: lifecycle and safety checks.
- host_wifi_nm_wire: NetworkManager's D-Bus names, numbers and the connection profile we add.
- host_wifi_nm_bus: `NmBus`, the D-Bus client for NetworkManager (calls, signals, loss).
- host_wifi_nm: `NmWifiHop`, hopping through NetworkManager (checkpoint, re-join, restore).
- host_wifi_supervisor_api: `SupervisorNetworkApi`, the Supervisor network API's calls and bodies.
- host_wifi_supervisor: `SupervisorWifiHop`, hopping through the Supervisor (profiles, restore).
- host_wifi_manual: `ManualHop`, the user hops by hand and we wait for the address.
- host_wifi_choice: the one place that picks a backend (`auto` falls back to manual).

Setup mode (the SonOTA method)
- setup_ap: client for the ITEAD setup AP (stage 1: `/device`, then `/ap` with Wi-Fi and cloud).
- legacy_tls: TLS for the fake cloud (self-signed certificate, context old firmware accepts).
- stage_progress: what every stage machine shares (`Listeners`, `weighted_fraction`).
- json_fields: reading one loosely typed JSON field a device sent (`opt_str`, `opt_int`).
- ewelink_messages: the eWeLink cloud's wire format (`UpgradeOffer`, dispatch and upgrade bodies).
- fake_cloud: `FakeCloud`, the server speaking it (HTTPS dispatch, WebSocket, device sessions).
- http_range: one HTTP `Range: bytes=` header, parsed and clamped (`parse_range`, `ByteRange`).
- image_names: the file names the devices fetch (fixed by their firmware or our URLs).
- image_server: `ImageServer`, the firmware download server of both paths and its served sets.
- setup_mode_errors: why a setup-mode flash stopped (`SetupModeError`, `StageTimeoutError`).
- setup_mode_wifi: `SetupModeWifi`, the hops at the points a setup-mode flash needs them.
- setup_mode_flasher: the setup-mode flash, stage by stage.

DIY mode (eWeLink 3.x)
- diy_discovery: the `_ewelink._tcp.local.` announcement and the DIY-flash eligibility check.
- diy_client: client for the DIY REST API (`POST :8081/zeroconf/<path>`).
- diy_ota_result: the device's `/api/device/otaFlash` report (`OtaResult`, `FlashResult`).
- diy_flasher: the DIY-mode flash, stage by stage.

Handing the flashed device to Home Assistant's Tasmota integration
- tasmota_settings: what a fresh Tasmota is told: Wi-Fi, MQTT, names, hardware (pure).
- tasmota_client: client for Tasmota's HTTP command API (`GET /cm?cmnd=...`).
- mac_address: MAC spellings, Tasmota's (`D8F15BAABBCC`) and HA's (`d8:f1:5b:aa:bb:cc`).
- tasmota_discovery: Tasmota's MQTT discovery message and the Wi-Fi manager SSID.
- tasmota_handoff_types: what the hand-off is given and gives back (settings, result, errors).
- tasmota_mqtt_feed: the hand-off's MQTT side (subscriptions, `DiscoveryFeed`, what it told).
- tasmota_handoff: from Tasmota's first boot to its MQTT discovery, both paths' last step.
- tasmota_releases: the newest Tasmota release (number, notes page) and a build's OTA URL.
- tasmota_upgrade_stages: a lite → full upgrade as a state machine (`UpgradeTracker`, errors).
- tasmota_upgrade: `TasmotaUpgrade`, lite → full with Tasmota's own OTA over MQTT.
"""
