"""The dashboard: every workspace's runs and artifacts in a browser; launches and cancels runs."""
