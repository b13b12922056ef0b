"""cc_modules."""
