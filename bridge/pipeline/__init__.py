"""The endpoint pipeline: a Source's messages, routed, handed to a Sink, settled.

- ``worker.py``: lifecycle, restarts, the session, the pump, the drain;
- ``settlement.py``: the only code that turns a sink's confirm into positions and acks;
- ``gaps.py``: replay gap detection, policy and records;
- ``status.py``: the observer (metrics and ``/status`` from typed client events);
- ``sink.py`` / ``source.py``: the two seams (RabbitMQ behind the one, CometD behind the other).
"""
