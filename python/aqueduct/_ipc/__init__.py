"""What a flow's processes share — the bottom layer above the native core:
the messages and error reports they exchange and the worker's start spec
(``protocol``), big payloads in shared memory (``shm``), the segments of a
flow and their layout (``topology``), and what HTTP routes get and give
(``http_messages``). Both the parent's runtime (``aqueduct._runtime``) and
the worker's (``aqueduct._worker``) build on it; it imports neither."""
