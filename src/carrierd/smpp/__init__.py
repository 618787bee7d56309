"""SMPP 3.4: sans-I/O codec, send window, sessions and per-carrier pools."""
