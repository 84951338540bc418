"""Executors run one engine step on a batch; the only code that touches the device."""
