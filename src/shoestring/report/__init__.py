"""The run report stage: one HTML page and summary.json over a recipe's artifacts."""
