"""The parent's end of one benchmark child process: started by spawning (a framework is
never forked), spoken to over a pipe whose replies are ``("ok", value)`` or ``("error",
traceback)`` (or ``("user", message)``: a mistake of the user's, raised as `UserError`),
and closed by sending ``None``. Imports no framework, so the parent stays
free of them (`peers`, `workers`)."""

from __future__ import annotations

from rslad_tf.common.errors import UserError


class ChildProcess:
    """Spawn ``target(child_end, *args)`` and talk to it; ``label`` names it in errors."""

    def __init__(self, target, args: tuple, label: str = "benchmark worker"):
        import multiprocessing

        self.label = label
        context = multiprocessing.get_context("spawn")  # never fork a framework
        self.conn, child = context.Pipe()
        self.process = context.Process(target=target, daemon=True, args=(child, *args))
        self.process.start()
        child.close()

    def receive(self):
        """The child's next reply; a RuntimeError if it died or reported an error."""
        try:
            status, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.label} died (exit code "
                               f"{self.process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"{self.label} failed:\n{value}")
        if status == "user":
            raise UserError(value)
        return value

    def terminate(self) -> None:
        """Stop the child now (the run is being abandoned)."""
        self.process.terminate()
        self.process.join(timeout=30)

    def close(self) -> None:
        """Ask the child to exit; terminate it if it has not within 30 s."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
