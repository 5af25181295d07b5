"""The synthesis service: a Ray Serve application over one generator checkpoint.

    settings.py    ServeArgs: every setting of the service, listed once (light: the CLI builds its options from it)
    app.py         the deployment (one replica: generator, batcher, its own FastAPI app) and its routes; `app` builds it
    middleware.py  RequestGate (API key, media type, per-client cap) and BodyLimit (size, time), pure ASGI
    errors.py      refusals shaped alike (field + message), what a response calls the checkpoint
    batching.py    IdleBatcher: a batch forms when the model is free; long batches yield to short ones between steps
    binding.py     where the service may listen without an API key
    encoders.py    wav / zip / npy / json response bodies
    page.py        the web page served at / (page.html, package data)

The request schema and batched synthesis live below, in emogen.inference (schema,
synthesis); the `emogen serve` command above, in emogen.cli.serve.
"""
