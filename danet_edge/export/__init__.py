"""export: see DESIGN.md."""
