"""Monitors and metrics usable in any training loop; no file IO."""
