"""The synthesis service: a Ray Serve application over one generator checkpoint.

    schema.py     request body, validation errors, a request with its defaults resolved (Job)
    synthesis.py  batched seeded synthesis through EmotionGenerator, Griffin-Lim rendering
    encoders.py   wav / zip / npy / json response bodies
    app.py        FastAPI ingress, the deployment, the typed application builder `app`
    command.py    the `emogen serve` subcommand
    page.html     the web page served at /

Imports run one way: emogen.cli.main -> command -> app -> the rest of the library.
"""
