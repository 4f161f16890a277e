"""Curation: raw multi-source data to a clean, deduplicated, privacy-safe, split dataset artifact."""
