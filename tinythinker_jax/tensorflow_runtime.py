"""TensorFlow as this project uses it: for data only, on the host, and quietly.

TensorFlow reads and tokenises the data (seqio, TFDS); JAX computes. Started through `start_for_data`, it
never claims a GPU (T5X hides them from it too: it would otherwise take accelerator memory JAX needs), and the
C++ lines it prints while it starts (CUDA probes, absl's notice before its first log line) stay out of a
command's output, which must end with its one `error:` line when something is wrong.
"""

import os
import re
import sys
import tempfile

# What TensorFlow's native start-up writes to stderr on a machine without a usable GPU, or before absl logs.
START_UP_NOISE = re.compile(
    r"absl::InitializeLog\(\) is called|cudart_stub\.cc|cuda_(platform|executor|diagnostics)\.cc|cuInit|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc|cpu_feature_guard\.cc|"
    r"oneDNN custom operations are on|TF-TRT Warning|rebuild TensorFlow with the appropriate compiler flags")


def start_for_data(show_everything: bool = False) -> None:
    """Imports TensorFlow with its GPUs hidden, keeping its start-up lines off stderr (others pass through).

    Args:
        show_everything: Write every captured line (`--debug`).
    """
    if "tensorflow" in sys.modules:  # started already (e.g. by a test session): nothing left to hide
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.set_visible_devices([], "GPU")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = [line for line in lines if show_everything or not START_UP_NOISE.search(line)]
            if kept:
                os.write(2, "".join(kept).encode())
