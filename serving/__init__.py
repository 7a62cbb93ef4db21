"""Generation on Ray Serve: the application (`app.py`, needs requirements-ray.txt), the JSON that crosses HTTP
(`wire.py`) and the page's side of it (`client.py`)."""
