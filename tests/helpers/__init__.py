"""Builders shared by tests in several folders: no tests live here."""
