"""The reference web UI: server-rendered HTML partials (Jinja2) driven by a vendored htmx."""
