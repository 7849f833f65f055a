"""Tests for alknet_firewall.integrations (one module per integration)."""
