"""``lmkit serve``: an OpenAI-compatible HTTP server over lmkit's generation (engine.py batches requests
into the KV-cache decoder; app.py is the HTTP layer; lifecycle.py answers health, /metrics (metrics.py)
and the chat page (page.py) while the model loads; server.py runs it under uvicorn). Needs the
``lmkit[serve]`` extra."""
