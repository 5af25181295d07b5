"""The Ray Serve synthesis application (serve/app.py); config in serve/config.yaml."""
