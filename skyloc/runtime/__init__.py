"""The onboard runtime. Never imports torch or timm: it runs on a Jetson image without them."""
