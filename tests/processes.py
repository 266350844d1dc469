"""Running a script as two local JAX processes, the way the multi-host tests do."""

import os
import socket
import subprocess
import sys


def run_two_processes(script: str, timeout: int = 300) -> list[str]:
    """Runs `script` as processes 0 and 1 (argv: coordinator port, process id); returns their outputs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    processes = [subprocess.Popen([sys.executable, "-c", script, port, str(i)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    return outputs
