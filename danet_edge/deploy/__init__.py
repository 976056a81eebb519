"""deploy: see DESIGN.md."""
