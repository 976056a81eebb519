"""trt: see DESIGN.md."""
