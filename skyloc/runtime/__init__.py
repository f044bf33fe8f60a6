"""The localization core: camera geometry, odometry, filter, registration, relocalization, estimate.

Never imports torch or timm: it runs on a Jetson image without them (`skyloc.onboard` carries
the I/O around it: camera, MAVLink, daemon, replay).
"""
