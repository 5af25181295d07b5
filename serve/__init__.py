"""`serve run serve.app:app` / `serve run serve/config.yaml`: the application lives in emogen.serving."""
