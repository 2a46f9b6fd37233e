"""Run test code in threads at once and collect what each raised."""

from __future__ import annotations

import threading
from collections.abc import Callable


def errors_of_concurrent(*bodies: Callable[[], object], timeout_s: float = 120.0
                         ) -> list[BaseException]:
    """Start one thread per body, wait for all, and return what they raised (empty: none)."""
    errors: list[BaseException] = []

    def run(body: Callable[[], object]) -> None:
        try:
            body()
        except BaseException as e:  # noqa: BLE001  (returned to the test, which asserts)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s)
    return errors
