"""The Gradio browser UI: the only package that imports gradio. Entry points: app.build_ui, app.launch_ui."""
