from emogen.serving.app import app  # noqa: F401  (`serve run serve.app:app` from the project root)
