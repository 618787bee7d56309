"""Pure domain core: no I/O, time passed in."""
