"""graph: see DESIGN.md."""
