"""Tracking: MLflow runs (`runs`) and registered models (`registry`)."""
