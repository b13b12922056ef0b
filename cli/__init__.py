"""The command line: `vfarm` and its verbs, each declared once (the only layer that parses arguments)."""
