"""Data: reading raw sources, cleaning and filtering, dedup, splitting, Arrow shards."""
