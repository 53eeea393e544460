"""Send API and delivery bench: accepted sends/s, deliveries/s to a 50 ms provider, and
accept→provider latency, Tidings (both profiles, real `tidings serve`/`tidings worker`
processes) next to a BullMQ producer/worker on the same machine. See `python -m bench.delivery`.
"""
