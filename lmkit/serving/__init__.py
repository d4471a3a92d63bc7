"""``lmkit serve``: an OpenAI-compatible HTTP server over lmkit's generation (engine.py batches requests
into the KV-cache decoder; app.py is the HTTP layer; server.py runs it under uvicorn). Needs the
``lmkit[serve]`` extra."""
