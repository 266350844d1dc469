"""Where a profiled call's time goes: the XLA operations' total time in a `--profile` trace, longest first.

    python benchmarks/trace_ops.py TRACE_DIR [--top 25]

Reads the Perfetto trace that `decode.py --profile TRACE_DIR` and `train_step.py --profile TRACE_DIR` write.
The names are the optimised HLO's (`ynn_fusion.2`, `dot.278`): running the benchmark with
`XLA_FLAGS=--xla_dump_to=DUMP_DIR` writes that HLO, where each operation's `op_name` says which JAX operation
it was compiled from. That is how the README's breakdown of a decoding step was read.
"""

import argparse
import collections
import glob
import gzip
import json
import os


def operation_times(trace_dir: str) -> dict[str, list[float]]:
    """"HLO module/HLO operation" -> the duration of each of its executions (microseconds), from the newest
    trace under `trace_dir`."""
    traces = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not traces:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: profile with --profile {trace_dir}")
    with gzip.open(max(traces, key=os.path.getmtime)) as f:
        events = json.load(f)["traceEvents"]
    times = collections.defaultdict(list)
    for event in events:
        args = event.get("args", {})
        if event.get("ph") == "X" and "hlo_op" in args:
            times[f"{args.get('hlo_module', '')}/{args['hlo_op']}"].append(event["dur"])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace_dir")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    times = operation_times(args.trace_dir)
    print(f"{sum(map(sum, times.values())) / 1e3:.1f} ms in {len(times)} XLA operations\n{'ms':>9} {'calls':>6}")
    for name, durations in sorted(times.items(), key=lambda item: -sum(item[1]))[: args.top]:
        print(f"{sum(durations) / 1e3:9.1f} {len(durations):6d}  {name}")


if __name__ == "__main__":
    main()
