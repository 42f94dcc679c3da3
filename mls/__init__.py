"""MLS layer: granular write-behind storage, drainers and engines (filled in by the MLS issues)."""
