"""cortex's URL table and thin handlers."""
