"""Compatibility layer for scripts written against the earlier implementation."""
