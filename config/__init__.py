"""The config language: the loader (YAML with positions), the section registry and each section's rules."""
