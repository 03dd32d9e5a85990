"""jaxtl: transfer learning with BERT-family Transformers in JAX/Flax."""

__version__ = "0.1.0"

# Set by the ``jaxtl`` command when it starts, ``"<pid>:<time.time()>"``: the moment this process
# became jaxtl (kept across its huge-pages re-exec, which keeps the pid), read by
# :func:`jaxtl.runlog.process_start_time`; a child process inherits it but has another pid.
ENTRY_TIME_ENV = "JAXTL_ENTRY_TIME"
