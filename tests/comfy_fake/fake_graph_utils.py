"""Our stand-in for `comfy_execution.graph_utils`: only `ExecutionBlocker`.

Host fact modelled: a node may return an ExecutionBlocker in place of an output value;
nodes downstream of it do not run, and a non-None message becomes their error text.
"""


class ExecutionBlocker:
    def __init__(self, message):
        self.message = message
