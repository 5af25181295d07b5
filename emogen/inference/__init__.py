"""Inference with trained checkpoints: the generator pipelines (`generator`) and their
parameter objects (`config`), the SER classifier, attention capture, the request schema,
synthesis and the MLflow pyfunc model."""
