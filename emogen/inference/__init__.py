"""Inference: trained checkpoints used: generator pipelines, the SER classifier, attention capture, the request schema, synthesis and the MLflow pyfunc model."""
