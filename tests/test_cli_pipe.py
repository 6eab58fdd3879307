"""A command whose reader closes the pipe early (`... | head -1`) ends quietly."""

import subprocess
import sys

# A command line that prints far more than a pipe buffer holds, so writing after the
# reader has gone is certain, not a race.
_LOUD_CLI = (
    "import sys\n"
    "from rslad_tf.common.errors import run_cli\n"
    "def main(argv):\n"
    "    for _ in range(200_000):\n"
    "        print('x' * 80)\n"
    "sys.exit(run_cli(main, []))\n"
)


def test_closed_stdout_pipe_is_not_an_internal_error():
    proc = subprocess.Popen([sys.executable, "-c", _LOUD_CLI],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    code = proc.wait(timeout=60)
    assert first.strip() == b"x" * 80
    assert stderr == "", stderr
    assert code == 141, (code, stderr)
