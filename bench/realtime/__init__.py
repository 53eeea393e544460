"""`python -m bench.realtime`: WebSocket fan-out of the realtime gateway against peers.

Every server (Tidings `serve`, Node `ws`, Node Socket.IO, python-socketio on uvicorn, the
`websockets` library's `broadcast()`) runs as one fresh process per run, pinned to one core;
one Node load client (bench/realtime/client.js) pinned to the other core drives all of them.
See bench/realtime/__main__.py for the scenarios and docs/benchmarks.md for the figures.
"""
