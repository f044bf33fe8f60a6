"""Onboard I/O around the localizer: camera sources, telemetry, MAVLink, the daemon and replay.

Like `skyloc.runtime`, never imports torch or timm: it runs on a Jetson image without them.
"""
