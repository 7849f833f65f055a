"""Tests for alknet_firewall; shared helpers are imported as ``from tests.<helper> import ...``."""
