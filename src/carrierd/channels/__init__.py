"""Delivery channels: SMS over SMPP and +Message over HTTP."""
