"""I/O shells around the domain decisions; engine/lifecycle.py is the only state writer."""
