"""The Gradio interface: one module per part of the page; `build_app` puts them together."""
