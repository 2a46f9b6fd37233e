"""``python -m bench NAME [options]``: run one benchmark (throughput, report, broker, recount,
status, reserve, plans)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {"throughput": "bench.throughput", "report": "bench.report_bench",
              "broker": "bench.broker_bench", "recount": "bench.recount_bench",
              "status": "bench.status_bench", "reserve": "bench.reserve_bench",
              "plans": "bench.plans_bench"}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[sys.argv[1]])
    code: int = module.main(sys.argv[2:])
    return code


if __name__ == "__main__":
    sys.exit(main())
