"""Test support shared by every part of the test tree (no tests here)."""
