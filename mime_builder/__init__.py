"""mime_builder."""
