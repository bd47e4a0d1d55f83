"""One lane's passage of a truck: the state machine, the transaction record and the lane modes.

May import ``core``, ``config`` and ``plc``; it is handed the decision as a callable.
"""
