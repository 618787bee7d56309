"""The HTTP server: one route table (app.py), one module per resource."""
