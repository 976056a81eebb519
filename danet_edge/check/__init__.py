"""check: see DESIGN.md."""
