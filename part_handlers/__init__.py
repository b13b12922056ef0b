"""part_handlers."""
