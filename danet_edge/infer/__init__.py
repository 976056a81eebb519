"""infer: see DESIGN.md."""
