"""The studio: a local web page to paint a label map and generate (server.py; the page in static/)."""
