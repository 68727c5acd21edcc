"""A flow as the process that starts it (or calls it) runs it.

``runtime.FlowRuntime`` owns everything that changes while a flow runs and
ties the rooms together: its ``config.FlowConfig`` (what the user built),
``seat`` (this process's ``client`` and, in a forked process, its view of the
owner: ``owner``, ``follower``), ``supervisor`` (worker processes, started by
``launch`` from ``specs``), ``recovery`` (worker deaths), ``healing`` (a
restart on fresh shared memory, followed by forked clients through
``rendezvous``) and ``metrics``.
"""
