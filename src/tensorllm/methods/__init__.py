"""Methods, registered by name (see registry.py): tucker, laser, gqa."""
