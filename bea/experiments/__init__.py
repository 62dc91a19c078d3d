"""Offline experiments: data sets, models, strategies, runners and configs."""
