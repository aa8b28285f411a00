"""Send each run's statistics to the browser, where web/js draws them on the node."""
from __future__ import annotations

import logging

EVENT = "duca.stats"  # the message type web/js/duca_timeline.js listens for
LOG = logging.getLogger("comfyui-duca")


def node_reporter(node_id):
    """A stats listener for one node of the graph; a no-op without a running server."""
    def report(stats):
        if node_id is None:  # a graph run by a script: no node to draw on
            return
        try:
            from server import PromptServer
        except ImportError:
            return
        instance = getattr(PromptServer, "instance", None)
        if instance is None:
            return
        # To the client that queued the prompt (None, e.g. a prompt posted by a script: every client).
        client = getattr(instance, "client_id", None)
        instance.send_sync(EVENT, {"node": str(node_id), "stats": stats.to_dict()}, client)
    return report
